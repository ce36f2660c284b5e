"""Loopback-only TCP fault-injection proxy.

The Python equivalent of Horde's ``Schism.partition`` / Akka's blackhole,
meant to sit between a node and PostgreSQL / Redis in tests::

    with Proxy("127.0.0.1", 5432) as proxy:
        dsn = f"postgresql://u:p@127.0.0.1:{proxy.port}/db"
        ...
        proxy.blackhole()   # partition: bytes vanish, sockets stay open
        ...
        proxy.heal()        # old connections are closed, new ones work

Design: one background thread runs a ``selectors`` event loop (epoll on
Linux) with non-blocking sockets and ``TCP_NODELAY`` on both legs, so the
proxy adds no measurable latency in normal mode.  Fault controls (``cut``,
``blackhole``, ``delay``, ``heal``) are executed *by the loop thread* and the
caller waits until they have been applied, so when a control returns it is
already in force for existing and new connections.

Only loopback addresses may be bound or connected to; anything else raises
``ValueError`` (the check is a real check, not an ``assert`` that ``-O``
would strip).
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Proxy", "NORMAL", "CUT", "BLACKHOLE"]

NORMAL = "normal"
CUT = "cut"
BLACKHOLE = "blackhole"

_READ_SIZE = 256 * 1024
# Stop reading from a side while more than this many bytes are waiting to be
# written to the other side (back-pressure, bounded memory).
_HIGH_WATER = 4 * 1024 * 1024
_CONTROL_TIMEOUT = 10.0

_EV_R = selectors.EVENT_READ
_EV_W = selectors.EVENT_WRITE


def _loopback(host: str) -> tuple[socket.AddressFamily, str]:
    """Return (family, literal address) for a loopback *host*, else raise."""
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h.lower() == "localhost":
        h = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        raise ValueError(f"chaos proxy is loopback-only; {host!r} is not a loopback address") from None
    if not ip.is_loopback:
        raise ValueError(f"chaos proxy is loopback-only; {host!r} is not loopback")
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return family, str(ip)


def _abort(sock: socket.socket | None) -> None:
    """Close *sock* with an RST (SO_LINGER 0) where possible."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _nodelay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


class _Pipe:
    """One direction of a proxied connection."""

    __slots__ = ("name", "queue", "queued", "out", "eof", "shut")

    def __init__(self, name: str) -> None:
        self.name = name  # "up" (client -> target) or "down" (target -> client)
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0  # bytes in queue (not yet released by the delay)
        self.out = bytearray()  # released bytes waiting to be written
        self.eof = False  # source sent FIN
        self.shut = False  # we sent FIN (shutdown(SHUT_WR)) to the destination

    def backlog(self) -> int:
        return self.queued + len(self.out)


class _Conn:
    __slots__ = ("cid", "client", "upstream", "connecting", "up", "down", "reg", "closed")

    def __init__(self, cid: int, client: socket.socket) -> None:
        self.cid = cid
        self.client: socket.socket | None = client
        self.upstream: socket.socket | None = None
        self.connecting = False
        self.up = _Pipe("up")
        self.down = _Pipe("down")
        self.reg = {"c": 0, "u": 0}  # currently registered selector masks
        self.closed = False

    def sock(self, role: str) -> socket.socket | None:
        return self.client if role == "c" else self.upstream


class Proxy:
    """A loopback TCP proxy ``127.0.0.1:<port> -> target_host:target_port``.

    All public methods are thread-safe.  Fault controls take effect
    immediately (they return once the I/O thread has applied them).
    """

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1") -> None:
        self._target_family, self.target_host = _loopback(target_host)
        if not 0 < int(target_port) < 65536:
            raise ValueError(f"bad target port {target_port!r}")
        self.target_port = int(target_port)
        self._listen_family, self.listen_host = _loopback(listen_host)
        self.port: int | None = None

        self._mode = NORMAL
        self._delay = 0.0
        self._conns: dict[int, _Conn] = {}
        self._delayed: set[_Conn] = set()
        self._next_cid = 0
        self._stats = collections.Counter()
        self.errors: list[BaseException] = []  # unexpected exceptions in the loop

        self._sel: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._cmds: collections.deque = collections.deque()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ API
    @property
    def address(self) -> tuple[str, int]:
        """``(listen_host, port)`` to point clients at (after ``start()``)."""
        if self.port is None:
            raise RuntimeError("proxy not started")
        return self.listen_host, self.port

    @property
    def mode(self) -> str:
        """``"normal"``, ``"cut"`` or ``"blackhole"``."""
        return self._mode

    def start(self) -> Proxy:
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("proxy already started")
            listener = socket.socket(self._listen_family, socket.SOCK_STREAM)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((self.listen_host, 0))
                listener.listen(1024)
                listener.setblocking(False)
            except BaseException:
                listener.close()
                raise
            self._listener = listener
            self.port = listener.getsockname()[1]
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._sel = selectors.DefaultSelector()
            self._sel.register(listener, _EV_R, "L")
            self._sel.register(self._wake_r, _EV_R, "W")
            self._running = True
            self._thread = threading.Thread(
                target=self._run,
                name=f"chaos-proxy:{self.port}->{self.target_port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection (RST); idempotent."""
        with self._lock:
            thread = self._thread
            if thread is None or not thread.is_alive():
                return
            self._call(self._do_stop)
        thread.join(_CONTROL_TIMEOUT)

    close = stop

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cut(self) -> None:
        """Reset all connections and refuse new ones until :meth:`heal`."""
        self._call(self._do_cut)

    def blackhole(self) -> None:
        """Silently drop all bytes in both directions until :meth:`heal`.

        Connections stay open (new ones are accepted too, but no upstream
        connection is made for them); EOFs are not propagated either, so the
        server keeps its session just as in a real partition.
        """
        self._call(self._do_blackhole)

    def delay(self, seconds: float) -> None:
        """Forward every chunk ``seconds`` after it was received; 0 removes it.

        Order is preserved; the new value also applies to bytes already held.
        """
        seconds = float(seconds)
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._call(lambda: self._do_delay(seconds))

    def heal(self) -> None:
        """Back to normal forwarding, no delay.

        After a blackhole every connection that existed (or was accepted)
        during it is closed with an RST, because its protocol stream is now
        corrupt; new connections work normally.
        """
        self._call(self._do_heal)

    def stats(self) -> dict[str, Any]:
        """Counters: connections accepted / active / refused / closed / failed,
        bytes forwarded up (client->target) and down, bytes dropped."""
        return self._call(self._do_stats)

    def __repr__(self) -> str:
        return (
            f"<Proxy {self.listen_host}:{self.port} -> {self.target_host}:{self.target_port}"
            f" mode={self._mode} delay={self._delay}>"
        )

    # ---------------------------------------------------- control plumbing
    def _call(self, fn: Callable[[], Any]) -> Any:
        thread = self._thread
        if thread is None or not thread.is_alive() or threading.current_thread() is thread:
            return fn()  # loop not running (or we are the loop): no race
        done = threading.Event()
        box: dict[str, Any] = {}
        self._cmds.append((fn, done, box))
        self._wake()
        if not done.wait(_CONTROL_TIMEOUT):
            raise RuntimeError(f"{self!r}: I/O thread did not respond")
        if "exc" in box:
            raise box["exc"]
        return box.get("result")

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already pending / shutting down

    def _run_cmds(self) -> None:
        while self._cmds:
            fn, done, box = self._cmds.popleft()
            try:
                box["result"] = fn()
            except BaseException as e:  # noqa: BLE001 - handed back to caller
                box["exc"] = e
            finally:
                done.set()

    # -------------------------------------------------------- the controls
    def _do_stop(self) -> None:
        self._running = False

    def _do_cut(self) -> None:
        self._mode = CUT
        for conn in list(self._conns.values()):
            self._stats["cut_reset"] += 1
            self._close(conn, abort=True)

    def _do_blackhole(self) -> None:
        self._mode = BLACKHOLE
        for conn in list(self._conns.values()):
            self._update(conn)

    def _do_delay(self, seconds: float) -> None:
        self._delay = seconds
        for conn in list(self._conns.values()):
            self._pump_both(conn)

    def _do_heal(self) -> None:
        previous = self._mode
        self._mode = NORMAL
        self._delay = 0.0
        for conn in list(self._conns.values()):
            if previous == BLACKHOLE:
                self._stats["blackhole_reset"] += 1
                self._close(conn, abort=True)
            else:
                self._pump_both(conn)

    def _do_stats(self) -> dict[str, Any]:
        s = self._stats
        return {
            "mode": self._mode,
            "delay": self._delay,
            "accepted": s["accepted"],
            "active": len(self._conns),
            "refused": s["refused"],
            "connect_failed": s["connect_failed"],
            "closed": s["closed"],
            "cut_reset": s["cut_reset"],
            "blackhole_reset": s["blackhole_reset"],
            "bytes_up": s["bytes_up"],
            "bytes_down": s["bytes_down"],
            "bytes_forwarded": s["bytes_up"] + s["bytes_down"],
            "bytes_dropped": s["bytes_dropped"],
            "errors": len(self.errors),
        }

    # ------------------------------------------------------------ the loop
    def _run(self) -> None:
        sel = self._sel
        try:
            while self._running:
                events = sel.select(self._timeout())
                for key, mask in events:
                    data = key.data
                    if data == "W":
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except (BlockingIOError, InterruptedError):
                            pass
                    elif data == "L":
                        self._accept()
                    else:
                        conn, role = data
                        if conn.closed or conn.sock(role) is not key.fileobj:
                            continue
                        try:
                            self._on_event(conn, role, mask)
                        except Exception as e:  # noqa: BLE001 - keep the loop alive
                            self.errors.append(e)
                            self._close(conn, abort=True)
                self._run_cmds()
                if self._delayed and self._mode != BLACKHOLE:
                    for conn in list(self._delayed):
                        if not conn.closed:
                            self._pump_both(conn)
        except BaseException as e:  # noqa: BLE001
            self.errors.append(e)
            raise
        finally:
            self._running = False
            for conn in list(self._conns.values()):
                self._close(conn, abort=True)
            for s in (self._listener, self._wake_r, self._wake_w):
                try:
                    sel.unregister(s)
                except (KeyError, ValueError):
                    pass
                s.close()
            sel.close()
            # Release anybody still waiting on a control.
            self._run_cmds()

    def _timeout(self) -> float | None:
        if not self._delayed or self._mode == BLACKHOLE:
            return None
        first: float | None = None
        for c in self._delayed:
            for p in (c.up, c.down):
                if p.queue and (first is None or p.queue[0][0] < first):
                    first = p.queue[0][0]
        if first is None:
            return None
        return max(0.0, first + self._delay - time.monotonic())

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.errors.append(e)
                    return
                if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            self._stats["accepted"] += 1
            if self._mode == CUT:
                self._stats["refused"] += 1
                _abort(sock)
                continue
            sock.setblocking(False)
            _nodelay(sock)
            self._next_cid += 1
            conn = _Conn(self._next_cid, sock)
            self._conns[conn.cid] = conn
            if self._mode != BLACKHOLE:
                # In a blackhole the SYN would never reach the target either.
                if not self._connect_upstream(conn):
                    continue
            self._update(conn)

    def _connect_upstream(self, conn: _Conn) -> bool:
        up = socket.socket(self._target_family, socket.SOCK_STREAM)
        up.setblocking(False)
        _nodelay(up)
        err = up.connect_ex((self.target_host, self.target_port))
        if err in (0, errno.EISCONN):
            conn.upstream = up
        elif err in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EALREADY):
            conn.upstream = up
            conn.connecting = True
        else:
            up.close()
            self._stats["connect_failed"] += 1
            self._close(conn, abort=True)
            return False
        return True

    # --------------------------------------------------------- connection
    def _on_event(self, conn: _Conn, role: str, mask: int) -> None:
        if role == "u" and conn.connecting:
            if not mask & _EV_W:
                return
            err = conn.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._stats["connect_failed"] += 1
                self._close(conn, abort=True)
                return
            conn.connecting = False
            if self._mode != BLACKHOLE:
                self._pump(conn, conn.up)
            if not conn.closed:
                self._update(conn)
            return
        if mask & _EV_R:
            self._read(conn, role)
        if not conn.closed and mask & _EV_W:
            self._pump(conn, conn.down if role == "c" else conn.up)
        if not conn.closed:
            self._update(conn)

    def _read(self, conn: _Conn, role: str) -> None:
        sock = conn.sock(role)
        pipe = conn.up if role == "c" else conn.down
        try:
            data = sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._side_lost(conn, role, failed=True)
            return
        if not data:
            self._side_lost(conn, role, failed=False)
            return
        if self._mode == BLACKHOLE:
            self._stats["bytes_dropped"] += len(data)
            return
        pipe.queue.append((time.monotonic(), data))
        pipe.queued += len(data)
        self._pump(conn, pipe)

    def _side_lost(self, conn: _Conn, role: str, failed: bool) -> None:
        if self._mode == BLACKHOLE:
            # Nothing crosses a partition, not even FIN/RST: hold the other
            # side open until heal() closes it.
            sock = conn.sock(role)
            self._set_mask(conn, role, 0)
            _abort(sock)
            if role == "c":
                conn.client = None
            else:
                conn.upstream = None
                conn.connecting = False
            if conn.client is None and conn.upstream is None:
                self._close(conn, abort=True)
            return
        if failed:
            self._close(conn, abort=True)
            return
        pipe = conn.up if role == "c" else conn.down
        pipe.eof = True
        self._pump(conn, pipe)

    def _pump_both(self, conn: _Conn) -> None:
        self._pump(conn, conn.up)
        if not conn.closed:
            self._pump(conn, conn.down)
        if not conn.closed:
            self._update(conn)

    def _pump(self, conn: _Conn, pipe: _Pipe) -> None:
        """Release due bytes, write what we can, propagate FIN when drained."""
        if conn.closed or self._mode == BLACKHOLE:
            return
        q = pipe.queue
        if q:
            deadline = time.monotonic() - self._delay
            while q and q[0][0] <= deadline:
                _, chunk = q.popleft()
                pipe.queued -= len(chunk)
                pipe.out += chunk
        if conn.up.queue or conn.down.queue:
            self._delayed.add(conn)
        else:
            self._delayed.discard(conn)
        dst = conn.upstream if pipe is conn.up else conn.client
        if dst is None or (pipe is conn.up and conn.connecting):
            return
        if pipe.out:
            try:
                n = dst.send(pipe.out)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                self._close(conn, abort=True)
                return
            if n:
                del pipe.out[:n]
                self._stats["bytes_" + pipe.name] += n
        if pipe.eof and not pipe.shut and not q and not pipe.out:
            pipe.shut = True
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                self._close(conn, abort=True)
                return
            if conn.up.shut and conn.down.shut:
                self._close(conn, abort=False)

    def _update(self, conn: _Conn) -> None:
        if conn.closed:
            return
        blackholed = self._mode == BLACKHOLE
        for role, rpipe, wpipe in (("c", conn.up, conn.down), ("u", conn.down, conn.up)):
            sock = conn.sock(role)
            if sock is None:
                continue
            if role == "u" and conn.connecting:
                mask = _EV_W
            else:
                mask = 0
                if not rpipe.eof and (blackholed or rpipe.backlog() < _HIGH_WATER):
                    mask |= _EV_R
                if not blackholed and wpipe.out:
                    mask |= _EV_W
            self._set_mask(conn, role, mask)

    def _set_mask(self, conn: _Conn, role: str, mask: int) -> None:
        old = conn.reg[role]
        if old == mask:
            return
        sock = conn.sock(role)
        if old == 0:
            self._sel.register(sock, mask, (conn, role))
        elif mask == 0:
            self._sel.unregister(sock)
        else:
            self._sel.modify(sock, mask, (conn, role))
        conn.reg[role] = mask

    def _close(self, conn: _Conn, abort: bool) -> None:
        if conn.closed:
            return
        conn.closed = True
        for role in ("c", "u"):
            sock = conn.sock(role)
            if sock is None:
                continue
            if conn.reg[role]:
                try:
                    self._sel.unregister(sock)
                except (KeyError, ValueError):
                    pass
                conn.reg[role] = 0
            if abort:
                _abort(sock)
            else:
                sock.close()
        conn.client = conn.upstream = None
        self._conns.pop(conn.cid, None)
        self._delayed.discard(conn)
        self._stats["closed"] += 1
