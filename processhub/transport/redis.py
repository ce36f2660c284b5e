"""Message transport between clients and nodes: an interface, an in-process twin, and Redis.

Delivery is at-most-once (DESIGN "Hints"). ``publish`` returns how many
subscribers received the bytes, so a sender learns at once that a channel has
nobody behind it (its node died) instead of waiting for a timeout.

Handlers run on the transport's event loop and must be quick: they only decode
and hand the message to a queue or a future.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from .exceptions import TransportUnavailable

logger = logging.getLogger(__name__)

Handler = Callable[[bytes], None]


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
        """A publisher for threads that run no event loop (the sync fast path), or None to hop onto the loop."""
        return None

    def loop_publisher(self, loop: asyncio.AbstractEventLoop) -> LoopPublisher | None:
        """A publisher on ``loop`` (not the runtime's: an ASGI server's), or None to hop onto the runtime loop."""
        return None


class MemoryTransport(Transport):
    """In-process twin: one bus per OS process, shared by every loop in it (embedded mode, fast tests)."""

    _bus: dict[str, list[tuple[asyncio.AbstractEventLoop, Handler, int]]] = {}
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


class RedisReplyError(Exception):
    """An error reply (``-ERR ...``) from Redis."""


class _RespReader:
    """Incremental RESP2 parser: ``feed`` bytes, ``gets`` replies (False while incomplete), like hiredis.Reader."""

    __slots__ = ("buf", "pos")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.pos = 0

    def feed(self, data: bytes) -> None:
        if self.pos:
            del self.buf[: self.pos]
            self.pos = 0
        self.buf += data

    def gets(self) -> Any:
        try:
            value, self.pos = _parse(self.buf, self.pos)
        except _Incomplete:
            return False
        return value


class _Incomplete(Exception):
    pass


def _parse(buf: bytearray, pos: int) -> tuple[Any, int]:
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = buf[pos]
    if kind == 36:  # $ bulk string
        n = int(buf[pos + 1:end])
        if n < 0:
            return None, end + 2
        start = end + 2
        if len(buf) < start + n + 2:
            raise _Incomplete
        return bytes(buf[start:start + n]), start + n + 2
    if kind == 42:  # * array
        n = int(buf[pos + 1:end])
        pos = end + 2
        if n < 0:
            return None, pos
        items = []
        for _ in range(n):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == 58:  # : integer
        return int(buf[pos + 1:end]), end + 2
    if kind == 43:  # + simple string
        return bytes(buf[pos + 1:end]).decode(), end + 2
    if kind == 45:  # - error
        return RedisReplyError(bytes(buf[pos + 1:end]).decode(errors="replace")), end + 2
    raise RedisReplyError(f"RESP protocol error: unexpected byte {kind!r}")


def _reader() -> Any:
    try:
        import hiredis
    except ImportError:
        return _RespReader()
    return hiredis.Reader(replyError=RedisReplyError, protocolError=RedisReplyError)


# Several messages to one channel in one PUBLISH: FRAME_MARK, then (4-byte big-endian length, bytes) each.
# A JSON envelope never starts with 0xFF (not even valid UTF-8), so a plain message is never mistaken for one.
# Only channels named with FRAMED_SUFFIX get frames: their reader is a processhub RedisTransport (nodes' and
# clients' own channels); anything else (a script or a test listening with redis-py) gets one message each.
FRAME_MARK = b"\xff"
FRAMED_SUFFIX = ".framed"
FRAME_MAX = 256 * 1024  # keep a subscriber's output buffer in Redis far below its limits


def _frames(datas: list[bytes], futs: list[asyncio.Future]) -> tuple[list[bytes], list[list[asyncio.Future]]]:
    payloads, groups = [], []
    parts, group, size = [FRAME_MARK], [], 1
    for data, fut in zip(datas, futs, strict=True):
        if group and size + 4 + len(data) > FRAME_MAX:
            payloads.append(b"".join(parts))
            groups.append(group)
            parts, group, size = [FRAME_MARK], [], 1
        parts += (len(data).to_bytes(4, "big"), data)
        group.append(fut)
        size += 4 + len(data)
    payloads.append(b"".join(parts))
    groups.append(group)
    return payloads, groups


def _unframe(data: bytes) -> list[bytes]:
    """The messages of a frame; a malformed frame is handed on whole (the handler rejects it)."""
    out, pos, end = [], 1, len(data)
    while pos < end:
        size = int.from_bytes(data[pos:pos + 4], "big")
        pos += 4
        if pos > end or pos + size > end:
            return [data]
        out.append(data[pos:pos + size])
        pos += size
    return out


def _pack(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


class _Endpoint:
    """Where a Redis URL points (TCP, TLS or a unix socket) and how to log in."""

    def __init__(self, url: str) -> None:
        from redis.connection import parse_url

        opts = parse_url(url)
        self.path = opts.get("path")
        self.host = opts.get("host") or "127.0.0.1"
        self.port = int(opts.get("port") or 6379)
        self.ssl = url.startswith("rediss:")
        self.username = opts.get("username")
        self.password = opts.get("password")

    async def connect(self, factory: Callable[[], asyncio.Protocol], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        if self.path:
            coro = loop.create_unix_connection(factory, self.path)
        elif self.ssl:
            import ssl

            coro = loop.create_connection(factory, self.host, self.port, ssl=ssl.create_default_context())
        else:
            coro = loop.create_connection(factory, self.host, self.port)
        await asyncio.wait_for(coro, timeout)

    def auth_command(self) -> bytes | None:
        if self.password is None:
            return None
        if self.username:
            return _pack(b"AUTH", self.username.encode(), self.password.encode())
        return _pack(b"AUTH", self.password.encode())


class _Conn(asyncio.Protocol):
    """One Redis connection; replies go to ``on_reply`` in arrival order, parsed in ``data_received``.

    Parsing in the protocol callback (no reader task, no per-read timeout
    context) is what makes this cheaper than redis.asyncio: a pub/sub message
    reaches its handler in the same loop iteration that read the socket.
    """

    def __init__(self, on_reply: Callable[[_Conn, Any], None]) -> None:
        self.on_reply = on_reply
        self.reader = _reader()
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()
        # Publisher connections: futures of the commands in flight, oldest first, with their send times.
        self.waiters: deque[tuple[asyncio.Future | list[asyncio.Future], float]] = deque()
        self.born = asyncio.get_running_loop().time()
        self.answered = False

    def young(self) -> bool:
        return asyncio.get_running_loop().time() - self.born < 5.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                self.on_reply(self, reply)
        except RedisReplyError as exc:  # a protocol error: this connection cannot be trusted any more
            logger.warning("processhub: Redis protocol error (%s); reconnecting", exc)
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)
        waiters, self.waiters = self.waiters, deque()
        for target, _ in waiters:
            for fut in target if type(target) is list else (target,):
                if not fut.done():
                    fut.set_exception(TransportUnavailable(f"Redis connection lost: {exc or 'closed'}"))

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise TransportUnavailable("Redis connection is closed")
        self.transport.write(data)

    def request(self, data: bytes) -> asyncio.Future:
        """Send one command and return the future of its reply (pipelined: no wait for earlier replies)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.write(data)
        self.waiters.append((fut, loop.time()))
        return fut

    def send_many(self, data: bytes, targets: list) -> None:
        """Write several commands at once; ``targets[i]`` (a future or a list of them) gets reply i."""
        self.write(data)
        now = asyncio.get_running_loop().time()
        self.waiters.extend((t, now) for t in targets)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class RedisTransport(Transport):
    """Redis PUBLISH/SUBSCRIBE over two asyncio-protocol connections (RESP2, pipelined).

    * Publishing: one connection; every ``publish`` writes its command at once
      and awaits its own reply (the receiver count) in FIFO order, so any number
      of concurrent publishes share the connection without a pool or a lock.
      A publish waiting longer than ``publish_timeout`` aborts the connection
      (checked once per ``ping_interval``); the next publish reconnects.
    * Subscribing: one connection, re-established (and every channel
      re-subscribed) after any error; a PING on it every ``ping_interval``
      detects a silently dead link (a blackholed proxy) within ``3 * ping_interval``.

    Uses hiredis to parse when it is installed, a small pure-Python parser otherwise.
    """

    def __init__(self, url: str, ping_interval: float = 1.0, publish_timeout: float = 2.0,
                 connect_timeout: float = 1.0) -> None:
        self.url = url
        self.ping_interval = ping_interval
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self._endpoint = _Endpoint(url)
        self._handlers: dict[str, Handler] = {}
        self._by_bytes: dict[bytes, Handler] = {}
        self._confirm: dict[bytes, asyncio.Future] = {}
        self._pub: _Conn | None = None
        self._pub_opening: asyncio.Task | None = None
        self._sub: _Conn | None = None
        self._tasks: list[asyncio.Task] = []
        self._heard = False
        self._silent = 0
        self._closed = False
        self._blocking: BlockingPublisher | None = None
        self._loop_pubs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._loop_pubs_lock = threading.Lock()
        self._outbox: dict[str, tuple[list[bytes], list[asyncio.Future]]] = {}
        self._flush_soon = False
        self.connected = asyncio.Event()

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._subscribe_forever(), name="processhub-redis-subscriber"),
            asyncio.create_task(self._ping_forever(), name="processhub-redis-pinger"),
        ]

    async def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in (self._pub, self._sub):
            if conn is not None and conn.transport is not None:
                conn.transport.close()
        self._pub = self._sub = None
        self.connected.clear()

    async def _open(self, on_reply: Callable[[_Conn, Any], None]) -> _Conn:
        conn = _Conn(on_reply)
        try:
            await self._endpoint.connect(lambda: conn, self.connect_timeout)
            auth = self._endpoint.auth_command()
            if auth is not None:
                reply = await asyncio.wait_for(conn.request(auth), self.publish_timeout)
                if isinstance(reply, RedisReplyError):
                    raise TransportUnavailable(f"Redis refused AUTH: {reply}")
        except (OSError, TimeoutError) as exc:
            conn.abort()
            raise TransportUnavailable(f"Redis is unreachable at {self.url}: {exc!r}") from exc
        return conn

    # ------------------------------------------------------------ publish

    def blocking(self) -> BlockingPublisher:
        if self._blocking is None:
            self._blocking = BlockingPublisher(self._endpoint, self.publish_timeout, self.connect_timeout)
        return self._blocking

    def loop_publisher(self, loop: asyncio.AbstractEventLoop) -> LoopPublisher | None:
        """The publisher of a loop that made LOOP_PUBLISHER_AFTER calls already (short-lived loops get none).

        Keyed weakly by the loop, and holding its connection weakly (the loop itself
        holds it while it reads), so a loop that is dropped takes its connection along.
        """
        try:
            entry = self._loop_pubs.get(loop)
            if entry is None:
                with self._loop_pubs_lock:
                    entry = self._loop_pubs.setdefault(loop, [0, None])
        except TypeError:
            return None  # a loop type that cannot be weakly referenced
        if entry[1] is None:
            entry[0] += 1
            if entry[0] < LOOP_PUBLISHER_AFTER:
                return None
            entry[1] = LoopPublisher(self)
        return entry[1]

    async def publish(self, channel: str, data: bytes) -> int:
        conn = self._pub
        if conn is None or conn.lost.done():
            await self._connect_publisher()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        queued = self._outbox.get(channel)
        if queued is None:
            self._outbox[channel] = ([data], [fut])
            if not self._flush_soon:
                self._flush_soon = True
                loop.call_soon(self._flush)
        else:
            queued[0].append(data)
            queued[1].append(fut)
        reply = await fut
        if isinstance(reply, RedisReplyError):
            raise TransportUnavailable(f"Redis refused PUBLISH: {reply}")
        return reply

    def _flush(self) -> None:
        """Send what this loop iteration published: one PUBLISH per channel, all in one write.

        Several messages to one channel travel as one frame (see ``_frame``): a
        burst of 500 starts or replies costs one Redis command and one pub/sub
        delivery instead of 500 (issue 4: activation rate, cast throughput).
        """
        self._flush_soon = False
        outbox, self._outbox = self._outbox, {}
        conn = self._pub
        if conn is None or conn.lost.done():
            for _, futs in outbox.values():
                for fut in futs:
                    if not fut.done():
                        fut.set_exception(TransportUnavailable("Redis connection lost before the publish"))
            return
        commands, targets = [], []
        for channel, (datas, futs) in outbox.items():
            ch = channel.encode()
            if len(datas) == 1:
                payloads, groups = datas, [futs]
            elif channel.endswith(FRAMED_SUFFIX):
                payloads, groups = _frames(datas, futs)
            else:
                payloads, groups = datas, [[f] for f in futs]
            for payload, group in zip(payloads, groups, strict=True):
                commands.append(b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
                                % (len(ch), ch, len(payload), payload))
                targets.append(group)
        try:
            conn.send_many(b"".join(commands), targets)
        except TransportUnavailable as exc:
            for group in targets:
                for fut in group:
                    if not fut.done():
                        fut.set_exception(exc)

    async def _connect_publisher(self) -> _Conn:
        if self._closed:
            raise TransportUnavailable("transport is closed")
        task = self._pub_opening
        if task is None or task.done():
            task = self._pub_opening = asyncio.ensure_future(self._open(self._on_pub_reply))
            task.add_done_callback(_retrieve)
        conn = await asyncio.shield(task)
        self._pub = conn
        return conn

    @staticmethod
    def _on_pub_reply(conn: _Conn, reply: Any) -> None:
        if not conn.waiters:
            return  # a reply nobody asked for: ignore
        target, _ = conn.waiters.popleft()
        if type(target) is list:  # the publishers of one frame share its receiver count
            for fut in target:
                if not fut.done():
                    fut.set_result(reply)
        elif not target.done():
            target.set_result(reply)

    # ------------------------------------------------------------ subscribe

    async def subscribe(self, channel: str, handler: Handler) -> None:
        ch = channel.encode()
        self._handlers[channel] = handler
        self._by_bytes[ch] = handler
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        try:
            while True:
                await asyncio.wait_for(self.connected.wait(), max(0.01, deadline - loop.time()))
                fut = self._confirm.get(ch)
                if fut is None or fut.done():
                    fut = self._confirm[ch] = loop.create_future()
                conn = self._sub
                if conn is None:
                    continue
                try:
                    conn.write(_pack(b"SUBSCRIBE", ch))
                except TransportUnavailable:
                    await asyncio.sleep(0.01)
                    continue
                # A reconnect in between re-subscribes every channel and resolves the same future.
                await asyncio.wait_for(asyncio.shield(fut), max(0.01, deadline - loop.time()))
                return
        except TimeoutError as exc:
            raise TransportUnavailable(f"cannot subscribe to {channel} on {self.url}: timed out") from exc

    async def unsubscribe(self, channel: str) -> None:
        self._handlers.pop(channel, None)
        ch = channel.encode()
        self._by_bytes.pop(ch, None)
        self._confirm.pop(ch, None)
        conn = self._sub
        if conn is not None and self.connected.is_set():
            try:
                conn.write(_pack(b"UNSUBSCRIBE", ch))
            except TransportUnavailable:
                logger.warning("processhub: unsubscribe %s failed; the reconnect will drop it", channel)

    def _on_sub_reply(self, conn: _Conn, reply: Any) -> None:
        self._heard = True
        if not conn.answered:
            conn.answered = True
            if conn is self._sub:
                self.connected.set()
                logger.info("processhub: connected to Redis at %s", self.url)
        if type(reply) is not list or len(reply) < 3:
            return  # +PONG outside subscribed mode, or an error reply to a PING
        kind = reply[0]
        if kind == b"message":
            handler = self._by_bytes.get(reply[1])
            if handler is not None:
                data = reply[2]
                for one in (_unframe(data) if data[:1] == FRAME_MARK else (data,)):
                    try:
                        handler(one)
                    except Exception:
                        logger.exception("processhub: handler for %s failed", reply[1])
        elif kind == b"subscribe":
            fut = self._confirm.pop(reply[1], None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    async def _subscribe_forever(self) -> None:
        backoff = 0.05
        while not self._closed:
            try:
                conn = await self._open(self._on_sub_reply)
                # Re-subscribe everything; "connected" is set by the first reply (a proxy may accept, then reset).
                self._sub = conn
                self._heard, self._silent = True, 0
                conn.write(_pack(b"SUBSCRIBE", *self._by_bytes) if self._by_bytes else b"*1\r\n$4\r\nPING\r\n")
                exc = await conn.lost
            except asyncio.CancelledError:
                raise
            except Exception as exc_:  # noqa: BLE001 - TransportUnavailable, or anything: log, back off, retry (I7)
                exc = exc_
                conn = None
            finally:
                self.connected.clear()
                self._sub = None
            if self._closed:
                break
            if conn is not None and not conn.young():
                backoff = 0.05  # a long session ended: reconnect at once
            level = logging.WARNING if conn is not None and conn.answered else logging.DEBUG
            logger.log(level, "processhub: Redis subscriber connection lost (%s); reconnecting", exc or "closed")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _ping_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            await asyncio.sleep(self.ping_interval)
            try:
                self._check(loop.time())
            except Exception:  # noqa: BLE001 - the watchdog of the connections must outlive any surprise
                logger.exception("processhub: Redis connection check failed")

    def _check(self, now: float) -> None:
        pub = self._pub
        if pub is not None and pub.waiters and now - pub.waiters[0][1] > self.publish_timeout:
            logger.warning("processhub: a Redis PUBLISH got no reply in %.1fs; reconnecting", self.publish_timeout)
            pub.abort()
        conn = self._sub
        if conn is None:
            return
        if not conn.answered:
            if now - conn.born > 3 * self.ping_interval:
                logger.warning("processhub: Redis did not answer a new subscriber connection; reconnecting")
                conn.abort()
            return
        if self._heard:
            self._heard, self._silent = False, 0
        else:
            self._silent += 1
            if self._silent >= 3:
                logger.warning("processhub: Redis subscriber silent for %.1fs; reconnecting",
                               self._silent * self.ping_interval)
                conn.abort()
                return
        try:
            conn.write(b"*1\r\n$4\r\nPING\r\n")
        except TransportUnavailable:
            conn.abort()


# A foreign loop gets its own publisher from its third call on (a loop made per call by async_to_sync never does).
LOOP_PUBLISHER_AFTER = 3


class LoopPublisher:
    """PUBLISH from an event loop that is not the runtime's (issue 4: acall from an ASGI server's loop).

    ``acall`` on a foreign loop used to hop to the runtime's loop thread and back
    (two thread switches, ~60 us each on a busy machine); with this, the request
    leaves from the caller's loop and only the reply hops. One connection per
    such loop, opened lazily; a publish waiting longer than ``publish_timeout``
    aborts it, and the next one reconnects.
    """

    def __init__(self, transport: RedisTransport) -> None:
        self._transport = transport
        self._conn: weakref.ref | None = None
        self._opening: asyncio.Future | None = None

    async def publish(self, channel: str, data: bytes) -> int:
        conn = self._conn() if self._conn is not None else None
        if conn is None or conn.lost.done():
            conn = await self._connect()
        ch = channel.encode()
        fut = conn.request(b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(ch), ch, len(data), data))
        timer = asyncio.get_running_loop().call_later(self._transport.publish_timeout, conn.abort)
        try:
            reply = await fut
        finally:
            timer.cancel()
        if isinstance(reply, RedisReplyError):
            raise TransportUnavailable(f"Redis refused PUBLISH: {reply}")
        return reply

    async def _connect(self) -> _Conn:
        task = self._opening
        if task is None or task.done():
            t = self._transport
            task = self._opening = asyncio.ensure_future(t._open(t._on_pub_reply))
            task.add_done_callback(_retrieve)
        conn = await asyncio.shield(task)
        self._conn = weakref.ref(conn)
        self._opening = None  # a finished task would hold the connection (and so the loop) strongly
        return conn


class BlockingPublisher:
    """PUBLISH from threads that run no event loop, each on its own blocking socket (issue 4: sync fast path).

    A sync ``call()`` or ``cast()`` in a view or a Celery task publishes here
    instead of handing a coroutine to the runtime's loop thread, which saves a
    thread switch per message (two for a cast). The socket lives in a
    thread-local and closes with its thread; any error drops it, and a
    connection that was idle (perhaps killed by a Redis restart) gets one retry
    on a fresh one.
    """

    def __init__(self, endpoint: _Endpoint, timeout: float, connect_timeout: float) -> None:
        self._endpoint = endpoint
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._local = threading.local()

    def publish(self, channel: str, data: bytes) -> int:
        ch = channel.encode()
        cmd = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(ch), ch, len(data), data)
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            try:
                return self._roundtrip(conn, cmd)
            except (OSError, EOFError):
                self._drop(conn)  # stale: retry once below on a fresh connection
        conn = self._connect()
        try:
            return self._roundtrip(conn, cmd)
        except (OSError, EOFError) as exc:
            self._drop(conn)
            raise TransportUnavailable(f"Redis is unreachable at {self._endpoint.host}: {exc!r}") from exc

    def _roundtrip(self, conn: tuple[Any, Any], cmd: bytes) -> int:
        sock, reader = conn
        sock.sendall(cmd)
        while (reply := reader.gets()) is False:
            data = sock.recv(65536)
            if not data:
                raise EOFError("Redis closed the connection")
            reader.feed(data)
        if isinstance(reply, RedisReplyError):
            raise TransportUnavailable(f"Redis refused PUBLISH: {reply}")
        return reply

    def _connect(self) -> tuple[Any, Any]:
        import socket

        ep = self._endpoint
        try:
            if ep.path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self._connect_timeout)
                sock.connect(ep.path)
            else:
                sock = socket.create_connection((ep.host, ep.port), timeout=self._connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if ep.ssl:
                    import ssl

                    sock = ssl.create_default_context().wrap_socket(sock, server_hostname=ep.host)
            sock.settimeout(self._timeout)
            conn = (sock, _reader())
            auth = ep.auth_command()
            if auth is not None and self._roundtrip(conn, auth) not in ("OK", b"OK"):
                raise TransportUnavailable("Redis refused AUTH")
        except (OSError, EOFError) as exc:
            raise TransportUnavailable(f"Redis is unreachable at {ep.host}: {exc!r}") from exc
        self._local.conn = conn
        return conn

    def _drop(self, conn: tuple[Any, Any]) -> None:
        self._local.conn = None
        try:
            conn[0].close()
        except OSError:
            pass


def _retrieve(task: asyncio.Task) -> None:
    # A failed connect is reported to whoever awaited it; never log it a second time as "never retrieved".
    if not task.cancelled():
        task.exception()


def make_transport(kind: str, redis_url: str | None) -> Transport:
    if kind == "redis":
        if not redis_url:
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured("PROCESSHUB TRANSPORT 'redis' needs REDIS_URL")
        return RedisTransport(redis_url)
    if kind == "channels":
        from .layer_transport import ChannelLayerTransport

        return ChannelLayerTransport()
    return MemoryTransport()
