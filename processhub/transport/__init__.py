"""Message transports between clients and nodes: the interface, its in-memory twin, Redis, a Channels layer."""
from __future__ import annotations

from .base import BlockingPublisher, Handler, LoopPublisher, Transport
from .memory import MemoryTransport
from .resp import FRAMED_SUFFIX

__all__ = ["BlockingPublisher", "FRAMED_SUFFIX", "Handler", "LoopPublisher", "MemoryTransport", "Transport",
           "make_transport"]


def make_transport(kind: str, hs: object) -> Transport:
    """The transport a hub's settings ask for (``TRANSPORT``, ``REDIS_URL`` and the ``REDIS_*`` options)."""
    if kind == "redis":
        from django.core.exceptions import ImproperlyConfigured

        from .redis import Endpoint, RedisTransport

        url = getattr(hs, "REDIS_URL", None)
        if not url:
            raise ImproperlyConfigured("PROCESSHUB TRANSPORT 'redis' needs REDIS_URL")
        endpoint = Endpoint(url, getattr(hs, "REDIS_OPTIONS", None), getattr(hs, "REDIS_SENTINELS", None),
                            getattr(hs, "REDIS_SENTINEL_MASTER", None), getattr(hs, "REDIS_SENTINEL_OPTIONS", None))
        return RedisTransport(endpoint)
    if kind == "channels":
        from .layer import ChannelLayerTransport

        return ChannelLayerTransport()
    return MemoryTransport()
