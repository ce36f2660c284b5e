"""The Redis transport processhub shipped before issue 4, kept for side-by-side benchmarks.

redis.asyncio PUBLISH through a connection pool and a ``PubSub.get_message``
reader task. Superseded by the asyncio-protocol ``RedisTransport``; only the
benchmark's design comparison uses it.
"""
from __future__ import annotations

import asyncio
import logging

from processhub.exceptions import TransportUnavailable
from processhub.transport import Handler, Transport

logger = logging.getLogger(__name__)


class RedisPyTransport(Transport):
    """Redis PUBLISH/SUBSCRIBE with one publishing pool and one subscriber connection.

    The subscriber connection is re-established (and every channel re-subscribed)
    after any error; a PING on it every ``ping_interval`` detects a silently dead
    link (a blackholed proxy) within ``3 * ping_interval``.
    """

    def __init__(self, url: str, ping_interval: float = 1.0) -> None:
        self.url = url
        self.ping_interval = ping_interval
        self._handlers: dict[str, Handler] = {}
        self._confirm: dict[str, asyncio.Future] = {}
        self._redis = None
        self._pubsub = None
        self._reader: asyncio.Task | None = None
        self._pinger: asyncio.Task | None = None
        self._last_seen = 0.0
        self._closed = False
        self.connected = asyncio.Event()

    def _client(self):
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # One quick retry: a pooled connection that died with a Redis restart
        # fails once and is replaced; a Redis that is really down fails fast.
        return aioredis.Redis.from_url(
            self.url,
            socket_connect_timeout=1.0,
            socket_timeout=2.0,
            retry=Retry(NoBackoff(), 1),
            max_connections=64,
        )

    async def start(self) -> None:
        self._redis = self._client()
        self._reader = asyncio.create_task(self._read_forever(), name="processhub-redis-reader")
        self._pinger = asyncio.create_task(self._ping_forever(), name="processhub-redis-pinger")

    async def close(self) -> None:
        self._closed = True
        for task in (self._reader, self._pinger):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self._reader, self._pinger) if t), return_exceptions=True)
        await self._drop_pubsub()
        if self._redis is not None:
            await self._redis.aclose()

    async def publish(self, channel: str, data: bytes) -> int:
        from redis.exceptions import RedisError

        try:
            return await self._redis.publish(channel, data)
        except (RedisError, OSError) as exc:
            raise TransportUnavailable(f"Redis is unreachable at {self.url}: {exc}") from exc

    async def subscribe(self, channel: str, handler: Handler) -> None:
        self._handlers[channel] = handler
        try:
            await asyncio.wait_for(self.connected.wait(), timeout=5.0)
            await self._send_subscribe([channel])
        except (TimeoutError, OSError) as exc:
            raise TransportUnavailable(f"cannot subscribe to {channel} on {self.url}: {exc}") from exc

    async def unsubscribe(self, channel: str) -> None:
        self._handlers.pop(channel, None)
        if self._pubsub is not None and self.connected.is_set():
            from redis.exceptions import RedisError

            try:
                await self._pubsub.unsubscribe(channel)
            except (RedisError, OSError):
                logger.warning("processhub: unsubscribe %s failed; the reconnect will drop it", channel)

    async def _send_subscribe(self, channels: list[str]) -> None:
        loop = asyncio.get_running_loop()
        futures = []
        for ch in channels:
            fut = self._confirm.get(ch)
            if fut is None or fut.done():
                fut = self._confirm[ch] = loop.create_future()
            futures.append(fut)
        await self._pubsub.subscribe(*channels)
        await asyncio.wait_for(asyncio.gather(*futures), timeout=5.0)

    async def _drop_pubsub(self) -> None:
        self.connected.clear()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except Exception:  # noqa: BLE001 - the connection is already broken; nothing to save
                logger.debug("processhub: closing a broken pubsub connection", exc_info=True)

    async def _read_forever(self) -> None:
        from redis.exceptions import RedisError

        backoff = 0.05
        loop = asyncio.get_running_loop()
        while not self._closed:
            try:
                if self._pubsub is None:
                    self._pubsub = self._redis.pubsub()
                    await self._pubsub.ping()  # connects
                    self._last_seen = loop.time()
                    self.connected.set()
                    if self._handlers:
                        # Re-subscribe everything in the background of the read loop.
                        loop.create_task(self._resubscribe(list(self._handlers)))
                    logger.info("processhub: connected to Redis at %s", self.url)
                    backoff = 0.05
                msg = await self._pubsub.get_message(timeout=self.ping_interval)
                if msg is None:
                    continue
                self._last_seen = loop.time()
                kind = msg["type"]
                channel = msg["channel"]
                if isinstance(channel, bytes):
                    channel = channel.decode()
                if kind == "message":
                    handler = self._handlers.get(channel)
                    if handler is not None:
                        try:
                            handler(msg["data"])
                        except Exception:
                            logger.exception("processhub: handler for %s failed", channel)
                elif kind == "subscribe":
                    fut = self._confirm.pop(channel, None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
            except asyncio.CancelledError:
                raise
            except (TimeoutError, RedisError, OSError) as exc:
                if self.connected.is_set():
                    logger.warning("processhub: Redis subscriber connection lost (%s); reconnecting", exc)
                await self._drop_pubsub()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def _resubscribe(self, channels: list[str]) -> None:
        from redis.exceptions import RedisError

        try:
            await self._send_subscribe(channels)
        except (TimeoutError, RedisError, OSError):
            logger.warning("processhub: re-subscribing failed; will retry on the next reconnect")
            await self._drop_pubsub()

    async def _ping_forever(self) -> None:
        from redis.exceptions import RedisError

        loop = asyncio.get_running_loop()
        while not self._closed:
            await asyncio.sleep(self.ping_interval)
            pubsub = self._pubsub
            if pubsub is None or not self.connected.is_set():
                continue
            if loop.time() - self._last_seen > 3 * self.ping_interval:
                silent = loop.time() - self._last_seen
                logger.warning("processhub: Redis subscriber silent for %.1fs; reconnecting", silent)
                if self._reader is not None:
                    # Dropping the pubsub under the reader makes it reconnect.
                    await self._drop_pubsub()
                continue
            try:
                await pubsub.ping()
            except (RedisError, OSError):
                await self._drop_pubsub()
