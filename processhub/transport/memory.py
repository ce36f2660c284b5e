"""The in-process twin of the transport: one bus per OS process (the embedded default, fast tests)."""
from __future__ import annotations

import asyncio
import threading
from typing import ClassVar

from .base import Handler, Transport


class MemoryTransport(Transport):
    """One bus per OS process, shared by every loop in it; handlers run on their subscriber's loop."""

    _bus: ClassVar[dict[str, list[tuple[asyncio.AbstractEventLoop, Handler, int]]]] = {}
    _lock = threading.Lock()

    def __init__(self) -> None:
        self._mine: set[str] = set()
        self._token = id(self)

    async def subscribe(self, channel: str, handler: Handler) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            subs = [s for s in self._bus.get(channel, []) if s[2] != self._token]
            subs.append((loop, handler, self._token))
            self._bus[channel] = subs
        self._mine.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        with self._lock:
            subs = [s for s in self._bus.get(channel, []) if s[2] != self._token]
            if subs:
                self._bus[channel] = subs
            else:
                self._bus.pop(channel, None)
        self._mine.discard(channel)

    async def publish(self, channel: str, data: bytes) -> int:
        subs = self._bus.get(channel, ())
        current = asyncio.get_running_loop()
        for loop, handler, _ in subs:
            if loop is current:
                loop.call_soon(handler, data)
            else:
                loop.call_soon_threadsafe(handler, data)
        return len(subs)

    async def close(self) -> None:
        for channel in list(self._mine):
            await self.unsubscribe(channel)

    def describe(self) -> str:
        return "in-process"
