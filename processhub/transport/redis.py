"""The Redis transport: PUBLISH/SUBSCRIBE over asyncio-protocol connections (RESP2, pipelined).

Connection settings come from redis-py, which already reads everything a Redis
URL can say (``redis://``, ``rediss://``, ``unix://``; user and password; TLS CA,
client certificate and key in the query string) and the ``REDIS_OPTIONS``
setting (the same keys as keyword arguments). Sentinel (``REDIS_SENTINELS`` +
``REDIS_SENTINEL_MASTER``) is asked for the master's address on every connect,
so a Redis failover is followed. Every connection authenticates (``AUTH``) before
it is used.

The data path is hand-written because it pays: the benchmarks measured
processhub's round trip at 0.376 ms against 0.708 ms for channels_redis's
``RedisPubSubChannelLayer`` on redis.asyncio and 3.2 ms for ``RedisChannelLayer``
(benchmarks/README.md "design comparison"): replies are parsed in the
protocol's ``data_received`` (no reader task), publishes are pipelined on one
connection, and several messages to one channel in one loop iteration travel as
one frame.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from typing import Any

from ..exceptions import TransportUnavailable
from ..logs import Throttled
from ..masking import mask_url
from .base import Handler, Transport
from .envelope import EnvelopeRefused, Keys, Opener, Sealer, legacy_refusal, legacy_request
from .resp import FRAME_MARK, FRAMED_SUFFIX, RedisReplyError, frames, pack, publish_command, reader, unframe

logger = logging.getLogger(__name__)

# A foreign loop gets its own publisher from its third call on (a loop made per call by async_to_sync never does).
LOOP_PUBLISHER_AFTER = 3


class Endpoint:
    """Where Redis is and how to log in: from a URL (and options), through redis-py's parser."""

    def __init__(self, url: str, options: dict | None = None, sentinels: list[str] | None = None,
                 sentinel_master: str | None = None, sentinel_options: dict | None = None) -> None:
        from redis.connection import parse_url

        opts = {**parse_url(url), **(options or {})}
        self.url = url
        self.safe_url = mask_url(url)
        self.path: str | None = opts.get("path")
        self.host: str = opts.get("host") or "127.0.0.1"
        self.port: int = int(opts.get("port") or 6379)
        self.username: str | None = opts.get("username")
        self.password: str | None = opts.get("password")
        self.tls = url.startswith("rediss:") or bool(opts.get("ssl"))
        self.ssl_options = {k: v for k, v in opts.items() if k.startswith("ssl_")}
        self.sentinels = [_host_port(s) for s in sentinels or ()]
        self.sentinel_master = sentinel_master
        self.sentinel_options = sentinel_options or {}
        self.generation = 0  # bumped when Sentinel names another master: connections made before are stale
        self._ssl_context: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        return f"<Endpoint {self.describe()}>"

    def describe(self) -> str:
        if self.sentinels:
            return f"sentinel master {self.sentinel_master!r} via {len(self.sentinels)} sentinels"
        return self.safe_url

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of ``rediss://`` URLs: CA file, client certificate and key, verification mode."""
        if not self.tls:
            return None
        if self._ssl_context is None:
            o = self.ssl_options
            ctx = ssl.create_default_context(cafile=o.get("ssl_ca_certs"), capath=o.get("ssl_ca_path"))
            if o.get("ssl_ca_data"):
                ctx.load_verify_locations(cadata=o["ssl_ca_data"])
            if o.get("ssl_certfile"):
                ctx.load_cert_chain(o["ssl_certfile"], o.get("ssl_keyfile"), o.get("ssl_password"))
            reqs = o.get("ssl_cert_reqs", "required")
            if isinstance(reqs, str):
                reqs = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
                        "required": ssl.CERT_REQUIRED}.get(reqs.lower(), ssl.CERT_REQUIRED)
            check = o.get("ssl_check_hostname", reqs != ssl.CERT_NONE)
            if isinstance(check, str):
                check = check.lower() not in ("0", "false", "no", "off")
            ctx.check_hostname = bool(check) and reqs != ssl.CERT_NONE
            ctx.verify_mode = reqs
            self._ssl_context = ctx
        return self._ssl_context

    def handshake(self) -> list[bytes]:
        """The commands a new connection sends before anything else (AUTH), in order."""
        if self.password is None:
            return []
        if self.username:
            return [pack(b"AUTH", self.username.encode(), self.password.encode())]
        return [pack(b"AUTH", self.password.encode())]

    # ------------------------------------------------------------ addresses

    async def address(self, timeout: float) -> tuple[str, int]:
        """The address to connect to now: the URL's, or the master Sentinel names (asked on every connect)."""
        if not self.sentinels:
            return self.host, self.port
        return await asyncio.to_thread(self.blocking_address, timeout)

    def blocking_address(self, timeout: float) -> tuple[str, int]:
        if not self.sentinels:
            return self.host, self.port
        from redis.exceptions import RedisError
        from redis.sentinel import MasterNotFoundError, Sentinel

        # redis-py takes sentinel_kwargs *instead of* the socket_* keywords: without these, REDIS_SENTINEL_OPTIONS
        # (a sentinel password) would make a silent sentinel an unbounded wait (DESIGN I7).
        kwargs = {"socket_timeout": timeout, "socket_connect_timeout": timeout, **self.sentinel_options}
        sentinel = Sentinel(self.sentinels, socket_timeout=timeout, sentinel_kwargs=kwargs)
        try:
            return sentinel.discover_master(self.sentinel_master)
        except (MasterNotFoundError, RedisError, OSError) as exc:
            # MasterNotFoundError lists each sentinel's error (AuthenticationError, TimeoutError): that is the cause.
            raise TransportUnavailable(f"no Redis master {self.sentinel_master!r} from the sentinels: "
                                       f"{type(exc).__name__}: {mask_url(str(exc))}") from None
        finally:
            for client in sentinel.sentinels:
                client.close()


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return (host or text).strip("[]"), int(port or 26379)


class _Conn(asyncio.Protocol):
    """One Redis connection; replies go to ``on_reply`` in arrival order, parsed in ``data_received``.

    Until the handshake is done (and on publisher connections always), replies
    resolve the futures of the commands in flight, oldest first. Parsing in the
    protocol callback (no reader task, no per-read timeout context) is what makes
    this cheaper than redis.asyncio: a pub/sub message reaches its handler in the
    same loop iteration that read the socket.
    """

    def __init__(self) -> None:
        self.on_reply: Callable[[_Conn, Any], None] = _resolve_waiter
        self.reader = reader()
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future = loop.create_future()
        # Futures of the commands in flight, oldest first, with their send times (a list: one frame's publishers).
        self.waiters: deque[tuple[asyncio.Future | list[asyncio.Future], float]] = deque()
        self.born = loop.time()
        self.answered = False
        self.address: tuple[str, int] | None = None  # where it connected (Sentinel's master at that time)
        self.refused = ""  # the last error reply on a subscriber connection (an ACL's NOPERM), for the error message
        self.why = ""  # why the connection was lost, for the error of a later write

    def young(self) -> bool:
        return asyncio.get_running_loop().time() - self.born < 5.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self.reader
        try:
            parser.feed(data)
            while (reply := parser.gets()) is not False:
                self.on_reply(self, reply)
        except RedisReplyError as exc:  # a protocol error: this connection cannot be trusted any more
            logger.warning("processhub: Redis protocol error (%s); reconnecting", exc)
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)
        waiters, self.waiters = self.waiters, deque()
        # The text too: an SSLError's says why ("tlsv13 alert certificate required": the server wants a client cert).
        why = self.why = f"{type(exc).__name__}: {mask_url(str(exc))}" if exc else "closed"
        for target, _ in waiters:
            for fut in target if isinstance(target, list) else (target,):
                if not fut.done():
                    fut.set_exception(TransportUnavailable(f"Redis connection lost: {why}"))

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            # A TLS server that refuses the client's certificate closes right after the handshake: say so.
            raise TransportUnavailable(f"Redis connection is closed ({self.why})" if self.why
                                       else "Redis connection is closed")
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
        self.waiters.extend([(t, now) for t in targets])

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _resolve_waiter(conn: _Conn, reply: Any) -> None:
    if not conn.waiters:
        return  # a reply nobody asked for: ignore
    target, _ = conn.waiters.popleft()
    if isinstance(target, list):  # the publishers of one frame share its receiver count
        for fut in target:
            if not fut.done():
                fut.set_result(reply)
    elif not target.done():
        target.set_result(reply)


async def open_connection(endpoint: Endpoint, timeout: float) -> _Conn:
    """Connect, log in, and return a connection whose replies resolve request futures."""
    conn = _Conn()
    loop = asyncio.get_running_loop()
    try:
        if endpoint.path:
            coro = loop.create_unix_connection(lambda: conn, endpoint.path)
        else:
            host, port = await endpoint.address(timeout)
            conn.address = (host, port)
            coro = loop.create_connection(lambda: conn, host, port, ssl=endpoint.ssl_context(),
                                          server_hostname=host if endpoint.tls else None)
        await asyncio.wait_for(coro, timeout)
        for command in endpoint.handshake():
            try:
                fut = conn.request(command)
            except TransportUnavailable:
                # Closed as it opened: a TLS server that refuses the client's certificate. Its alert says why.
                await asyncio.wait({conn.lost}, timeout=0.5)
                raise TransportUnavailable(f"Redis at {endpoint.describe()} closed the connection at once "
                                           f"({conn.why or 'no reason given'})") from None
            reply = await asyncio.wait_for(fut, timeout)
            if isinstance(reply, RedisReplyError):
                conn.abort()
                raise TransportUnavailable(f"Redis at {endpoint.describe()} refused AUTH: {_first_word(reply)}")
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        conn.abort()
        raise TransportUnavailable(f"Redis is unreachable at {endpoint.describe()}: {type(exc).__name__}: "
                                   f"{mask_url(str(exc))}") from None
    return conn


def _first_word(reply: Exception) -> str:
    # "WRONGPASS invalid username-password pair..." -> the error code only; never echo the command.
    return str(reply).split(" ", 1)[0]


def _refusal(reply: Exception) -> str:
    # NOPERM texts name the command or say "channel", never an argument: whole, they say what to grant.
    text = str(reply)
    return mask_url(text[:200]) if text.startswith("NOPERM") else _first_word(reply)


class RedisTransport(Transport):
    """Redis PUBLISH/SUBSCRIBE over two connections.

    * Publishing: one connection; every ``publish`` writes its command at once
      and awaits its own reply (the receiver count) in FIFO order, so any number
      of concurrent publishes share the connection without a pool or a lock.
      A publish waiting longer than ``publish_timeout`` aborts the connection
      (checked once per ``ping_interval``); the next publish reconnects.
    * Subscribing: one connection, re-established (and every channel
      re-subscribed) after any error; a PING on it every ``ping_interval``
      detects a silently dead link (a blackholed proxy) within ``3 * ping_interval``.
    """

    def __init__(self, url: str | Endpoint, keys: Keys, replay_window: float = 30.0, ping_interval: float = 1.0,
                 publish_timeout: float = 2.0, connect_timeout: float = 1.0, prefix: str = "processhub") -> None:
        self.endpoint = url if isinstance(url, Endpoint) else Endpoint(url)
        # Subscribed to when nothing else is, so the connection is in subscribed mode; under the hub's prefix,
        # which is all an ACL user of the hub may subscribe to.
        self._idle_channel = f"{prefix}.idle".encode()
        self.keys = keys
        self._sealer = Sealer(keys)
        self._opener = Opener(keys, replay_window)
        self.refused: Counter[str] = Counter()  # messages dropped unopened, by reason (a metric)
        self._legacy_answered = 0.0
        self.ping_interval = ping_interval
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.dropped_frames = 0  # messages cut from oversized frames (a metric)
        self._handlers: dict[bytes, Handler] = {}
        self._confirm: dict[bytes, asyncio.Future] = {}
        self._pub: _Conn | None = None
        self._pub_opening: asyncio.Future | None = None
        self._sub: _Conn | None = None
        self._tasks: list[asyncio.Task] = []
        self._heard = False
        self._silent = 0
        self._closed = False
        self._blocking: RedisBlockingPublisher | None = None
        self._loop_pubs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._loop_pubs_lock = threading.Lock()
        self._outbox: dict[str, tuple[list[bytes], list[asyncio.Future]]] = {}
        self._flush_soon = False
        self._log = Throttled(logger)
        self._last_error = ""
        self.connected = asyncio.Event()

    def describe(self) -> str:
        return f"Redis at {self.endpoint.describe()}"

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

    async def _open(self) -> _Conn:
        return await open_connection(self.endpoint, self.connect_timeout)

    # ------------------------------------------------------------ publish

    def blocking(self) -> RedisBlockingPublisher:
        if self._blocking is None:
            self._blocking = RedisBlockingPublisher(self.endpoint, self.keys, self.publish_timeout,
                                                    self.connect_timeout)
        return self._blocking

    def loop_publisher(self, loop: asyncio.AbstractEventLoop) -> RedisLoopPublisher | None:
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
            entry[1] = RedisLoopPublisher(self)
        return entry[1]

    def publish(self, channel: str, data: bytes) -> Coroutine[Any, Any, int]:
        # Sealed now, in the order publishes are made: the counter must grow in the order Redis delivers.
        # (A plain function handing on _enqueue's coroutine: one coroutine per message, not two.)
        return self._enqueue(channel, self._sealer.seal(channel.encode(), data, time.time()))

    async def _enqueue(self, channel: str, data: bytes) -> int:
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
            raise TransportUnavailable(f"Redis refused PUBLISH: {_first_word(reply)}")
        return reply

    def _flush(self) -> None:
        """Send what this loop iteration published: one PUBLISH per channel and frame, all in one write.

        A burst of 500 starts or replies costs one Redis command and one pub/sub
        delivery instead of 500 (activation rate, cast throughput).
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
                payloads, groups = frames(datas, futs)
            else:
                payloads, groups = datas, [[f] for f in futs]
            for payload, group in zip(payloads, groups, strict=True):
                commands.append(publish_command(ch, payload))
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
            task = self._pub_opening = asyncio.ensure_future(self._open())
            task.add_done_callback(_retrieve)
        conn = await asyncio.shield(task)
        self._pub = conn
        return conn

    # ------------------------------------------------------------ subscribe

    async def subscribe(self, channel: str, handler: Handler) -> None:
        ch = channel.encode()
        self._handlers[ch] = handler
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        try:
            while True:
                while not self.connected.is_set():
                    if "refused" in self._last_error or "closed the connection at once" in self._last_error:
                        # A wrong password, an ACL without the hub's channels, a refused certificate:
                        # waiting longer changes nothing.
                        raise TransportUnavailable(f"cannot subscribe to {channel} on {self.describe()}: "
                                                   f"{self._last_error}")
                    if loop.time() >= deadline:
                        raise TimeoutError
                    try:
                        await asyncio.wait_for(self.connected.wait(), min(0.1, deadline - loop.time()))
                    except TimeoutError:
                        continue
                fut = self._confirm.get(ch)
                if fut is None or fut.done():
                    fut = self._confirm[ch] = loop.create_future()
                conn = self._sub
                if conn is None:
                    continue
                try:
                    conn.write(pack(b"SUBSCRIBE", ch))
                except TransportUnavailable:
                    await asyncio.sleep(0.01)
                    continue
                # A reconnect in between re-subscribes every channel and resolves the same future.
                await asyncio.wait_for(asyncio.shield(fut), max(0.01, deadline - loop.time()))
                return
        except TimeoutError:
            why = f" (last error: {self._last_error})" if self._last_error else ""
            raise TransportUnavailable(f"cannot subscribe to {channel} on {self.describe()}: timed out{why}") from None

    async def unsubscribe(self, channel: str) -> None:
        ch = channel.encode()
        self._handlers.pop(ch, None)
        self._confirm.pop(ch, None)
        conn = self._sub
        if conn is not None and self.connected.is_set():
            try:
                conn.write(pack(b"UNSUBSCRIBE", ch))
            except TransportUnavailable:
                logger.warning("processhub: unsubscribe %s failed; the reconnect will drop it", channel)

    def _on_sub_reply(self, conn: _Conn, reply: Any) -> None:
        self._heard = True
        if type(reply) is not list or len(reply) < 3:
            if isinstance(reply, RedisReplyError):
                # A refused SUBSCRIBE (an ACL user without the hub's channels) or PING: what subscribe() reports.
                conn.refused = f"Redis refused a command: {_refusal(reply)}"
                if "channel" in str(reply):
                    self._last_error = conn.refused  # a SUBSCRIBE refused: subscribe() fails at once with why
            return  # +PONG outside subscribed mode, or an error reply to a PING
        kind = reply[0]
        if kind == b"message":
            channel = reply[1]
            handler = self._handlers.get(channel)
            if handler is None:
                return
            data = reply[2]
            messages: list[bytes] | tuple[bytes]
            if data[:1] == FRAME_MARK:
                messages, dropped = unframe(data)
                if dropped:
                    self.dropped_frames += dropped
                    self._log.warning("frames", "processhub: dropped a frame of more than the allowed messages on %s",
                                      channel[:80])
            else:
                messages = (data,)
            opener, now = self._opener, time.time()
            for one in messages:
                try:
                    payload = opener.open(channel, one, now)
                except EnvelopeRefused as exc:
                    self._refuse(channel, one, exc.reason)
                    continue
                try:
                    handler(payload)
                except Exception:
                    self._log.log(logging.ERROR, "handler", "processhub: a message handler failed on %s", channel[:80])
        elif kind == b"subscribe":
            if not conn.answered:
                conn.answered = True
                if conn is self._sub:
                    self.connected.set()
                    logger.info("processhub: connected to %s", self.describe())
            fut = self._confirm.pop(reply[1], None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    def _refuse(self, channel: bytes, data: bytes, reason: str) -> None:
        """Drop a message that is not a fresh envelope of this hub: counted, logged once per interval."""
        self.refused[reason] += 1
        self._log.warning(f"refused {reason}", "processhub: dropped a message on %s: %s (%d dropped for this "
                          "reason so far)", channel[:80].decode(errors="replace"), reason, self.refused[reason])
        if reason == "unsigned":
            legacy = legacy_request(data)
            now = time.monotonic()
            if legacy is not None and now - self._legacy_answered > 1.0:
                # An older processhub (wire version 1): tell it why, at most once a second.
                self._legacy_answered = now
                asyncio.ensure_future(self._enqueue(legacy[0], legacy_refusal(legacy[1]))).add_done_callback(
                    _retrieve)

    async def _subscribe_forever(self) -> None:
        backoff = 0.05
        while not self._closed:
            conn = None
            try:
                conn = await self._open()
                # Re-subscribe everything (to a channel of our own when there is nothing yet, so that the
                # connection is in subscribed mode); "connected" is set by the first confirmation.
                conn.on_reply = self._on_sub_reply
                self._sub = conn
                self._heard, self._silent = True, 0
                channels = list(self._handlers) or [self._idle_channel]
                conn.write(pack(b"SUBSCRIBE", *channels))
                exc = await conn.lost
                self._last_error = ""
            except asyncio.CancelledError:
                raise
            except Exception as exc_:  # noqa: BLE001 - TransportUnavailable, or anything: log, back off, retry (I7)
                exc = exc_
            finally:
                self.connected.clear()
                self._sub = None
            if self._closed:
                break
            if conn is not None and not conn.young():
                backoff = 0.05  # a long session ended: reconnect at once
            answered = conn is not None and conn.answered
            refused = conn.refused if conn is not None else ""
            self._last_error = mask_url(str(exc)) if exc else (refused or "closed")
            self._log.log(logging.WARNING if answered else logging.INFO, "sub-lost",
                          "processhub: Redis subscriber connection lost (%s); reconnecting", self._last_error)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _ping_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            await asyncio.sleep(self.ping_interval)
            try:
                self._check(loop.time())
                if self.endpoint.sentinels:
                    await self._follow_master()
            except TransportUnavailable as exc:
                self._log.warning("sentinel", "processhub: %s", exc)
            except Exception:  # noqa: BLE001 - the watchdog of the connections must outlive any surprise
                logger.exception("processhub: Redis connection check failed")

    async def _follow_master(self) -> None:
        """Ask Sentinel where the master is now; leave a master that is no longer one (a failover, or a
        partition that isolated it), even while it still answers."""
        master = await self.endpoint.address(self.connect_timeout)
        moved = [c for c in (self._sub, self._pub) if c is not None and c.address not in (None, master)]
        if moved:
            logger.warning("processhub: Sentinel names %s:%s as the Redis master now; reconnecting", *master)
            self.endpoint.generation += 1  # blocking publishers reconnect on their next publish
            for conn in moved:
                conn.abort()

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


class RedisLoopPublisher:
    """PUBLISH from an event loop that is not the runtime's (``acall`` from an ASGI server's loop).

    ``acall`` on a foreign loop used to hop to the runtime's loop thread and back
    (two thread switches, ~60 us each on a busy machine); with this, the request
    leaves from the caller's loop and only the reply hops. One connection per
    such loop, opened lazily; a publish waiting longer than ``publish_timeout``
    aborts it, and the next one reconnects.
    """

    def __init__(self, transport: RedisTransport) -> None:
        self._transport = transport
        self._sealer = Sealer(transport.keys)
        self._generation = 0
        self._conn: weakref.ref | None = None
        self._opening: asyncio.Future | None = None

    async def publish(self, channel: str, data: bytes) -> int:
        conn = self._conn() if self._conn is not None else None
        if conn is not None and self._generation != self._transport.endpoint.generation:
            conn.abort()  # made before Sentinel named another master
            conn = None
        if conn is None or conn.lost.done():
            conn = await self._connect()
        ch = channel.encode()
        fut = conn.request(publish_command(ch, self._sealer.seal(ch, data, time.time())))
        timer = asyncio.get_running_loop().call_later(self._transport.publish_timeout, conn.abort)
        try:
            reply = await fut
        finally:
            timer.cancel()
        if isinstance(reply, RedisReplyError):
            raise TransportUnavailable(f"Redis refused PUBLISH: {_first_word(reply)}")
        return reply

    async def _connect(self) -> _Conn:
        task = self._opening
        if task is None or task.done():
            task = self._opening = asyncio.ensure_future(self._transport._open())
            task.add_done_callback(_retrieve)
        self._generation = self._transport.endpoint.generation
        conn = await asyncio.shield(task)
        self._conn = weakref.ref(conn)
        self._opening = None  # a finished task would hold the connection (and so the loop) strongly
        return conn


class RedisBlockingPublisher:
    """PUBLISH from threads that run no event loop, each on its own blocking socket (the sync fast path).

    A sync ``call()`` or ``cast()`` in a view or a Celery task publishes here
    instead of handing a coroutine to the runtime's loop thread, which saves a
    thread switch per message (two for a cast). The socket lives in a
    thread-local and closes with its thread; any error drops it, and a
    connection that was idle (perhaps killed by a Redis restart) gets one retry
    on a fresh one.
    """

    def __init__(self, endpoint: Endpoint, keys: Keys, timeout: float, connect_timeout: float) -> None:
        self._endpoint = endpoint
        self._keys = keys
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._local = threading.local()

    def publish(self, channel: str, data: bytes) -> int:
        ch = channel.encode()
        local = self._local
        sealer = getattr(local, "sealer", None)
        if sealer is None:
            sealer = local.sealer = Sealer(self._keys)  # one sender per thread: its counter grows in send order
        conn = getattr(local, "conn", None)
        if conn is not None and getattr(local, "generation", 0) != self._endpoint.generation:
            self._drop(conn)  # made before Sentinel named another master
            conn = None
        if conn is not None:
            try:
                return self._roundtrip(conn, publish_command(ch, sealer.seal(ch, data, time.time())))
            except (OSError, EOFError):
                self._drop(conn)  # stale: retry once below on a fresh connection
        conn = self._connect()
        try:
            return self._roundtrip(conn, publish_command(ch, sealer.seal(ch, data, time.time())))
        except (OSError, EOFError) as exc:
            self._drop(conn)
            raise TransportUnavailable(f"Redis is unreachable at {self._endpoint.describe()}: "
                                       f"{type(exc).__name__}") from None

    def _roundtrip(self, conn: tuple[Any, Any], cmd: bytes) -> Any:
        sock, parser = conn
        sock.sendall(cmd)
        while (reply := parser.gets()) is False:
            data = sock.recv(65536)
            if not data:
                raise EOFError("Redis closed the connection")
            parser.feed(data)
        if isinstance(reply, RedisReplyError):
            raise TransportUnavailable(f"Redis refused the command: {_first_word(reply)}")
        return reply

    def _connect(self) -> tuple[Any, Any]:
        ep = self._endpoint
        sock = None
        try:
            if ep.path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self._connect_timeout)
                sock.connect(ep.path)
            else:
                host, port = ep.blocking_address(self._connect_timeout)
                sock = socket.create_connection((host, port), timeout=self._connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                ctx = ep.ssl_context()
                if ctx is not None:
                    sock = ctx.wrap_socket(sock, server_hostname=host)
            sock.settimeout(self._timeout)
            conn = (sock, reader())
            for command in ep.handshake():
                self._roundtrip(conn, command)
        except BaseException as exc:
            if sock is not None:
                sock.close()
            if isinstance(exc, (OSError, EOFError)):
                raise TransportUnavailable(f"Redis is unreachable at {ep.describe()}: {type(exc).__name__}") from None
            raise
        self._local.conn = conn
        self._local.generation = ep.generation
        return conn

    def _drop(self, conn: tuple[Any, Any]) -> None:
        self._local.conn = None
        try:
            conn[0].close()
        except OSError:
            pass


def _retrieve(task: asyncio.Future) -> None:
    # A failed connect is reported to whoever awaited it; never log it a second time as "never retrieved".
    if not task.cancelled():
        task.exception()
