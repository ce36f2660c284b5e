"""A transport over any Django Channels layer (``TRANSPORT = "channels"``).

For projects that want every byte to go through their configured channel layer
(``InMemoryChannelLayer``, ``RedisChannelLayer``). Channel layers do not say
whether anyone received a message, so ``publish`` always reports one receiver:
a call to a dead node waits for its timeout instead of failing over at once.
The default ``redis`` transport does not have that limit (see the benchmarks).
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import Counter
from typing import Any

from ..exceptions import TransportUnavailable
from ..logs import Throttled
from .base import Handler, Transport
from .envelope import EnvelopeRefused, Keys, Opener, Sealer

logger = logging.getLogger(__name__)


class ChannelLayerTransport(Transport):
    def __init__(self, keys: Keys, replay_window: float = 30.0, alias: str | None = None) -> None:
        from ..conf import hub_settings

        self.alias = alias or hub_settings().CHANNEL_LAYER
        self._sealer = Sealer(keys)
        self._opener = Opener(keys, replay_window)
        self.refused: Counter[str] = Counter()
        self._log = Throttled(logger)
        self.layer: Any = None
        self._readers: dict[str, asyncio.Task] = {}

    async def start(self) -> None:
        from channels.layers import get_channel_layer

        self.layer = get_channel_layer(self.alias)
        if self.layer is None:
            raise TransportUnavailable(f"no channel layer is configured under {self.alias!r}")

    async def subscribe(self, channel: str, handler: Handler) -> None:
        await self.unsubscribe(channel)
        self._readers[channel] = asyncio.create_task(self._read(channel, handler))

    async def _read(self, channel: str, handler: Handler) -> None:
        while True:
            try:
                message = await self.layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any layer error: log, back off, keep listening
                logger.warning("processhub: channel layer receive on %s failed: %s", channel, exc)
                await asyncio.sleep(0.5)
                continue
            try:
                payload = self._opener.open(channel.encode(), base64.b64decode(message["b"]), time.time())
            except (EnvelopeRefused, KeyError, TypeError, ValueError) as exc:
                reason = exc.reason if isinstance(exc, EnvelopeRefused) else "malformed"
                self.refused[reason] += 1
                self._log.warning(reason, "processhub: dropped a message on %s: %s", channel, reason)
                continue
            try:
                handler(payload)
            except Exception:
                self._log.log(logging.ERROR, "handler", "processhub: a message handler failed on %s", channel)

    async def unsubscribe(self, channel: str) -> None:
        task = self._readers.pop(channel, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def publish(self, channel: str, data: bytes) -> int:
        try:
            # Channel layers carry dicts; bytes travel base64-encoded under "b".
            sealed = self._sealer.seal(channel.encode(), data, time.time())
            await self.layer.send(channel, {"type": "processhub.message", "b": base64.b64encode(sealed).decode()})
        except Exception as exc:  # noqa: BLE001 - layers raise assorted errors; callers get one named type
            raise TransportUnavailable(f"channel layer {self.alias!r} failed: {exc}") from exc
        return 1

    async def close(self) -> None:
        for channel in list(self._readers):
            await self.unsubscribe(channel)
