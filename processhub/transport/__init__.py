"""Message transports between clients and nodes: the interface, its in-memory twin, Redis, a Channels layer."""
from __future__ import annotations

from typing import Any

from .base import BlockingPublisher, Handler, LoopPublisher, Transport
from .memory import MemoryTransport
from .resp import FRAMED_SUFFIX

__all__ = ["BlockingPublisher", "FRAMED_SUFFIX", "Handler", "LoopPublisher", "MemoryTransport", "Transport",
           "make_transport"]


def make_transport(kind: str, hs: Any) -> Transport:
    """The transport a hub's settings ask for (``TRANSPORT``, ``REDIS_URL``, the ``REDIS_*`` options, ``SECRET``).

    The in-process transport carries messages unsealed: they never leave the OS process.
    """
    if kind == "memory":
        return MemoryTransport()
    from ..conf import envelope_keys

    keys = envelope_keys(hs)
    if kind == "redis":
        from django.core.exceptions import ImproperlyConfigured

        from .redis import Endpoint, RedisTransport

        if not hs.REDIS_URL:
            raise ImproperlyConfigured("PROCESSHUB TRANSPORT 'redis' needs REDIS_URL")
        endpoint = Endpoint(hs.REDIS_URL, hs.REDIS_OPTIONS, hs.REDIS_SENTINELS, hs.REDIS_SENTINEL_MASTER,
                            hs.REDIS_SENTINEL_OPTIONS)
        return RedisTransport(endpoint, keys, hs.REPLAY_WINDOW, prefix=hs.PREFIX)
    from .layer import ChannelLayerTransport

    return ChannelLayerTransport(keys, hs.REPLAY_WINDOW)
