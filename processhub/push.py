"""Pushing from processes to browsers: each process's Channels group, and sends through the channel layer.

A consumer (processhub.consumers) joins ``channel_group(label, process_id)`` for
the process it talks to; the process sends to that group (or any other) with
``HordeProcess.group_send``. The send goes through the project's channel layer
(``CHANNEL_LAYERS``: channels_redis in a cluster, the in-memory layer embedded),
so every tab receives it, whichever web server it is connected to; and since the
group name depends only on the process's class and id, a push survives a move.
"""
from __future__ import annotations

import asyncio
import hashlib
import weakref
from typing import Any

# Channels group names: ASCII letters, digits, hyphens, underscores and periods, shorter than 100 characters.
GROUP_PREFIX = "processhub.p."


def channel_group(label: str, process_id: str) -> str:
    """The Channels group of one process (any id, hashed to a valid group name)."""
    digest = hashlib.blake2b(f"{label}\x00{process_id}".encode(), digest_size=16).hexdigest()
    return f"{GROUP_PREFIX}{digest}"


async def group_send(group: str, message: dict[str, Any], alias: str = "default") -> None:
    """Send ``message`` (a dict with a "type", as Channels wants) to every consumer in ``group``."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer(alias)
    if layer is None:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"group_send needs a channel layer: CHANNEL_LAYERS has no {alias!r}")
    home = _home_loops.get(layer)
    if home is not None and home.is_running() and home is not asyncio.get_running_loop():
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(layer.group_send(group, message), home))
        return
    await layer.group_send(group, message)


# Channels' InMemoryChannelLayer keeps plain asyncio queues and dicts: a send from another thread's loop (the
# embedded node's) would not wake the consumer's loop, and races its group_add. Its sends run on the loop
# its consumers wait on, which a ProcessConsumer records when it connects.
_home_loops: weakref.WeakKeyDictionary[Any, asyncio.AbstractEventLoop] = weakref.WeakKeyDictionary()


def bind_layer_loop(layer: Any) -> None:
    """Record the running loop as the one whose consumers use ``layer``, if the layer is bound to one loop."""
    from channels.layers import InMemoryChannelLayer

    if isinstance(layer, InMemoryChannelLayer):
        _home_loops[layer] = asyncio.get_running_loop()
