"""The transport interface: publish bytes to named channels, subscribe handlers to channels.

Delivery is at-most-once (DESIGN "Hints"). ``publish`` returns how many
subscribers received the bytes, so a sender learns at once that a channel has
nobody behind it (its node died) instead of waiting for a timeout. Handlers run
on the transport's event loop and must be quick: they only decode and hand the
message to a queue or a future.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

Handler = Callable[[bytes], None]


class BlockingPublisher(Protocol):
    """Publishes from a thread that runs no event loop (the sync fast path)."""

    def publish(self, channel: str, data: bytes) -> int: ...


class LoopPublisher(Protocol):
    """Publishes from an event loop that is not the runtime's (an ASGI server's)."""

    async def publish(self, channel: str, data: bytes) -> int: ...


class Transport:
    """Publish bytes to named channels; subscribe handlers to channels."""

    async def start(self) -> None:
        """Open connections; called on the loop the transport will live on."""

    async def close(self) -> None:
        """Close connections and drop subscriptions."""

    async def subscribe(self, channel: str, handler: Handler) -> None:
        """Subscribe and return once messages published from now on will reach ``handler``."""
        raise NotImplementedError

    async def unsubscribe(self, channel: str) -> None:
        raise NotImplementedError

    async def publish(self, channel: str, data: bytes) -> int:
        """Send; return the number of receivers. Raise TransportUnavailable when down."""
        raise NotImplementedError

    def blocking(self) -> BlockingPublisher | None:
        """A publisher for threads that run no event loop, or None to hop onto the loop."""
        return None

    def loop_publisher(self, loop: asyncio.AbstractEventLoop) -> LoopPublisher | None:
        """A publisher on ``loop`` (not the runtime's), or None to hop onto the runtime loop."""
        return None

    def describe(self) -> str:
        """Where the transport connects, safe to log (no password)."""
        return type(self).__name__
