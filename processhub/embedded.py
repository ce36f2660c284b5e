"""The embedded default: one node inside the web server process (no REDIS_URL, the in-process transport).

The node is the only one of its hub, so it never ends its OS process when user
code outlives its lease (an ``EmbeddedNode`` waits for that code instead, see
processhub/node/node.py): a web server is not a process a node may kill.
"""
from __future__ import annotations

import asyncio
import logging

from .conf import hub_settings
from .node import EmbeddedNode
from .runtime import Runtime, get_runtime

logger = logging.getLogger(__name__)


def start_node(rt: Runtime) -> None:
    """Start the embedded node of a new runtime (called from a thread that is not the runtime's loop)."""
    node = EmbeddedNode(rt, name=hub_settings().NODE_NAME or "embedded")
    asyncio.run_coroutine_threadsafe(node.start(), rt.loop).result(30)
    logger.info("processhub: embedded node %s started in this process", node.name)


def start_if_embedded() -> None:
    """Start this process's runtime (and with it the embedded node) now rather than on first use."""
    if not hub_settings().embedded:
        return
    from django.db import DatabaseError

    try:
        get_runtime()
    except DatabaseError as exc:
        # Typically: migrations not applied yet. The node starts on first use instead.
        logger.warning("processhub: embedded node not started yet: %s", exc)
