"""Tests of the fault-injection tools in tests/chaos (no Django)."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:  # pragma: no cover - depends on how pytest is invoked
    sys.path.insert(0, _ROOT)

from tests.chaos.detector import Backwards, Overlap, SplitEpoch, check  # noqa: E402
from tests.chaos.proxy import Proxy  # noqa: E402

# --------------------------------------------------------------------------
# helpers


class EchoServer:
    """Threaded loopback echo server; tracks how many connections it holds."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.open = 0
        self.accepted = 0
        self._lock = threading.Lock()
        self._stopped = False
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.open += 1
                self.accepted += 1
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self.open -= 1
            conn.close()

    def close(self) -> None:
        self._stopped = True
        self.sock.close()
        with self._lock:
            for c in self._conns:
                try:
                    c.close()
                except OSError:
                    pass


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo):
    with Proxy("127.0.0.1", echo.port) as p:
        yield p
        assert not p.errors, p.errors


def connect(port: int, timeout: float = 2.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)}/{n} bytes")
        buf += chunk
    return bytes(buf)


def roundtrip(s: socket.socket, payload: bytes) -> bytes:
    s.sendall(payload)
    return recv_exactly(s, len(payload))


def is_closed(s: socket.socket, timeout: float = 2.0) -> bool:
    """True if the peer closed/reset *s* (EOF or RST) within *timeout*."""
    s.settimeout(timeout)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def refused_or_closed(port: int) -> bool:
    """A new connection is refused, or accepted and then closed/reset."""
    try:
        s = connect(port)
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    with s:
        try:
            s.sendall(b"ping")
        except (ConnectionResetError, BrokenPipeError):
            return True
        return is_closed(s)


def wait_for(pred, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


# --------------------------------------------------------------------------
# proxy


def test_forward_and_stats(proxy):
    with connect(proxy.port) as s:
        assert roundtrip(s, b"hello") == b"hello"
        big = os.urandom(3 * 1024 * 1024)  # exercises partial writes/back-pressure
        received = bytearray()

        def reader():
            received.extend(recv_exactly(s, len(big)))

        t = threading.Thread(target=reader)
        t.start()
        s.sendall(big)
        t.join(10)
        assert bytes(received) == big
    st_ = proxy.stats()
    assert st_["accepted"] == 1
    assert st_["bytes_up"] == st_["bytes_down"] == len(big) + 5
    assert st_["bytes_forwarded"] == 2 * (len(big) + 5)
    assert st_["mode"] == "normal"


def test_half_close_propagates(proxy, echo):
    with connect(proxy.port) as s:
        s.sendall(b"abc")
        s.shutdown(socket.SHUT_WR)
        assert recv_exactly(s, 3) == b"abc"
        assert is_closed(s)
    assert wait_for(lambda: proxy.stats()["active"] == 0)
    assert wait_for(lambda: echo.open == 0)


def test_cut_resets_and_refuses_until_heal(proxy):
    s = connect(proxy.port)
    assert roundtrip(s, b"x") == b"x"
    proxy.cut()
    assert is_closed(s)
    s.close()
    assert proxy.stats()["active"] == 0
    assert refused_or_closed(proxy.port)
    assert proxy.stats()["refused"] >= 1
    proxy.heal()
    with connect(proxy.port) as s2:
        assert roundtrip(s2, b"back") == b"back"


def test_blackhole_holds_then_heal_closes_old(proxy, echo):
    old = connect(proxy.port)
    assert roundtrip(old, b"before") == b"before"
    proxy.blackhole()
    old.sendall(b"lost")
    old.settimeout(0.3)
    with pytest.raises(socket.timeout):
        old.recv(100)
    # New connections are accepted but nothing flows.
    during = connect(proxy.port)
    during.sendall(b"nothing")
    during.settimeout(0.3)
    with pytest.raises(socket.timeout):
        during.recv(100)
    # Nothing crosses the partition, not even a FIN: the server keeps its
    # session open although the client went away.
    gone = connect(proxy.port)
    assert wait_for(lambda: proxy.stats()["active"] == 3)
    gone.close()
    time.sleep(0.1)
    assert echo.open == 1  # only `old` reached the server; `gone` never did
    assert proxy.stats()["bytes_dropped"] >= len(b"lost") + len(b"nothing")

    proxy.heal()
    assert is_closed(old)
    assert is_closed(during)
    old.close()
    during.close()
    assert wait_for(lambda: echo.open == 0)
    with connect(proxy.port) as s:
        assert roundtrip(s, b"after") == b"after"


def test_blackhole_hides_client_close_from_server(echo):
    with Proxy("127.0.0.1", echo.port) as proxy:
        s = connect(proxy.port)
        assert roundtrip(s, b"hi") == b"hi"
        proxy.blackhole()
        s.close()
        time.sleep(0.2)
        assert echo.open == 1  # server did not learn about the close
        proxy.heal()
        assert wait_for(lambda: echo.open == 0)


def test_delay_adds_latency_and_preserves_order(proxy):
    with connect(proxy.port) as s:
        assert roundtrip(s, b"warm") == b"warm"
        proxy.delay(0.2)
        t0 = time.monotonic()
        assert roundtrip(s, b"ping") == b"ping"
        rtt = time.monotonic() - t0
        assert rtt >= 0.2  # 0.2 s each way, so really >= 0.4
        assert rtt >= 0.39

        chunks = [bytes([i]) * 100 for i in range(50)]
        for c in chunks:
            s.sendall(c)
            time.sleep(0.001)
        assert recv_exactly(s, 5000) == b"".join(chunks)

        proxy.delay(0)
        t0 = time.monotonic()
        assert roundtrip(s, b"fast") == b"fast"
        assert time.monotonic() - t0 < 0.15


def test_delay_zero_releases_held_bytes(proxy):
    with connect(proxy.port) as s:
        proxy.delay(30)
        s.sendall(b"held")
        time.sleep(0.05)
        proxy.delay(0)
        s.settimeout(2)
        assert recv_exactly(s, 4) == b"held"


def test_many_concurrent_connections(proxy):
    n, rounds = 64, 20
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            with connect(proxy.port, timeout=5) as s:
                for r in range(rounds):
                    payload = f"{i}:{r}:".encode() + os.urandom(100 + i * 50)
                    assert roundtrip(s, payload) == payload
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    assert proxy.stats()["accepted"] == n
    assert wait_for(lambda: proxy.stats()["active"] == 0)


def test_target_down_closes_client():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with Proxy("127.0.0.1", port) as proxy:
        assert refused_or_closed(proxy.port)
        assert wait_for(lambda: proxy.stats()["connect_failed"] == 1)


def test_controls_before_start_and_stop_idempotent(echo):
    p = Proxy("localhost", echo.port)
    p.delay(0.05)
    p.heal()
    p.start()
    with connect(p.port) as s:
        assert roundtrip(s, b"ok") == b"ok"
        p.stop()
        assert is_closed(s)
    p.stop()
    with pytest.raises(ConnectionRefusedError):
        connect(p.port)


@pytest.mark.parametrize(
    "target,listen",
    [
        ("10.0.0.1", "127.0.0.1"),
        ("example.com", "127.0.0.1"),
        ("127.0.0.1", "0.0.0.0"),
        ("127.0.0.1", "::"),
        ("192.168.1.1", "::1"),
    ],
)
def test_loopback_only(target, listen):
    with pytest.raises(ValueError, match="loopback"):
        Proxy(target, 5432, listen_host=listen)


def test_ipv6_loopback_listen(echo):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        p = Proxy("127.0.0.1", echo.port, listen_host="::1").start()
    except OSError:
        pytest.skip("::1 not available")
    try:
        with socket.create_connection(("::1", p.port), timeout=2) as s:
            assert roundtrip(s, b"v6") == b"v6"
    finally:
        p.stop()


# ---- real Redis through the proxy


def test_redis_through_proxy_blackhole():
    # The Redis the test command set up (scripts/test exports REDIS_URL), never a guessed one.
    from urllib.parse import urlsplit

    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from tests.chaos.cluster import with_address

    url = os.environ.get("REDIS_URL") or pytest.fail("REDIS_URL is not set: run the tests with scripts/test")
    parts = urlsplit(url)
    key = f"chaos-proxy-test:{os.getpid()}:{time.time_ns()}"
    with Proxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        through = with_address(url, "127.0.0.1", proxy.port)
        # redis-py >= 6 retries timeouts 3 times by default (each retry on a
        # fresh connection, which the blackhole also swallows); disable that
        # so the test sees exactly one socket_timeout.
        r = redis.Redis.from_url(through, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
        try:
            assert r.set(key, "v1", ex=60)
            assert r.get(key) == b"v1"
            proxy.blackhole()
            t0 = time.monotonic()
            with pytest.raises(redis.exceptions.TimeoutError):
                r.get(key)
            assert time.monotonic() - t0 > 0.4  # held by the blackhole until the client's own timeout
            proxy.heal()
            r2 = redis.Redis.from_url(through, socket_timeout=0.5)
            try:
                assert r2.set(key, "v2", ex=60)
                assert r2.get(key) == b"v2"
            finally:
                r2.delete(key)
                r2.close()
        finally:
            r.close()
        assert not proxy.errors


# --------------------------------------------------------------------------
# detector


def ev(pid, node, epoch, kind, t):
    return {"pid": pid, "node": node, "epoch": epoch, "kind": kind, "t": t}


def activation(pid, node, epoch, start, stop=None, ticks=()):
    out = [ev(pid, node, epoch, "start", start)]
    out += [ev(pid, node, epoch, "tick", t) for t in ticks]
    if stop is not None:
        out.append(ev(pid, node, epoch, "stop", stop))
    return out


CASES = {
    "clean handover": dict(
        events=activation("p1", "n1", 1, 0.0, 5.0, ticks=[1, 2, 3])
        + activation("p1", "n2", 2, 5.5, None, ticks=[6, 7]),
        activations=2,
        overlaps=[],
        backwards=[],
        lost=[],
    ),
    "overlap": dict(
        events=activation("p1", "n1", 1, 0.0, 7.0, ticks=[1, 2]) + activation("p1", "n2", 2, 5.0, None, ticks=[6]),
        activations=2,
        overlaps=[Overlap("p1", 1, "n1", 2, "n2", 2.0)],
        backwards=[],
        lost=[],
    ),
    "overlap via last tick, no stop": dict(
        events=activation("p1", "n1", 3, 0.0, None, ticks=[1, 9]) + activation("p1", "n2", 4, 8.0, 10.0),
        activations=2,
        overlaps=[Overlap("p1", 3, "n1", 4, "n2", 1.0)],
        backwards=[],
        lost=[],
    ),
    "start missing, first tick counts": dict(
        events=[ev("p1", "n1", 1, "tick", 1.0), ev("p1", "n1", 1, "tick", 4.0)]
        + [ev("p1", "n2", 2, "tick", 3.0), ev("p1", "n2", 2, "stop", 6.0)],
        activations=2,
        overlaps=[Overlap("p1", 1, "n1", 2, "n2", 1.0)],
        backwards=[],
        lost=[],
    ),
    "equal times at boundary are not an overlap": dict(
        events=activation("p1", "n1", 1, 0.0, 5.0) + activation("p1", "n2", 2, 5.0, 9.0),
        activations=2,
        overlaps=[],
        backwards=[],
        lost=[],
    ),
    "backwards epoch": dict(
        events=activation("p1", "n1", 5, 0.0, 1.0) + activation("p1", "n2", 4, 2.0, 3.0),
        activations=2,
        overlaps=[Overlap("p1", 4, "n2", 5, "n1", 3.0)],  # epoch 4 acted after epoch 5 began
        backwards=[Backwards("p1", 5, "n1", 0.0, 4, "n2", 2.0)],
        lost=[],
    ),
    "three-way overlap reports every pair": dict(
        events=activation("p1", "a", 1, 0.0, 10.0)
        + activation("p1", "b", 2, 2.0, 10.0)
        + activation("p1", "c", 3, 4.0, 10.0),
        activations=3,
        overlaps=[
            Overlap("p1", 1, "a", 2, "b", 8.0),
            Overlap("p1", 1, "a", 3, "c", 6.0),
            Overlap("p1", 2, "b", 3, "c", 6.0),
        ],
        backwards=[],
        lost=[],
    ),
    "different pids never interact": dict(
        events=activation("p1", "n1", 1, 0.0, 10.0) + activation("p2", "n2", 2, 1.0, 10.0),
        activations=2,
        overlaps=[],
        backwards=[],
        lost=[],
    ),
    "lost pid": dict(
        events=activation("p1", "n1", 1, 0.0, None, ticks=[1, 20]) + activation("p2", "n1", 1, 0.0, 5.0),
        expected_pids={"p1", "p2", "p3"},
        alive_since=10.0,
        activations=2,
        overlaps=[],
        backwards=[],
        lost=["p2", "p3"],
    ),
    "event exactly at alive_since is alive": dict(
        events=activation("p1", "n1", 1, 0.0, None, ticks=[10.0]),
        expected_pids={"p1"},
        alive_since=10.0,
        activations=1,
        overlaps=[],
        backwards=[],
        lost=[],
    ),
    "no alive_since: lost means never seen": dict(
        events=activation("p1", "n1", 1, 0.0, 1.0),
        expected_pids={"p1", "p2"},
        activations=1,
        overlaps=[],
        backwards=[],
        lost=["p2"],
    ),
    "empty": dict(events=[], activations=0, overlaps=[], backwards=[], lost=[]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_detector_cases(name):
    case = CASES[name]
    report = check(
        case["events"],
        expected_pids=case.get("expected_pids"),
        alive_since=case.get("alive_since"),
    )
    assert report.activations == case["activations"]
    assert sorted(report.overlaps) == sorted(case["overlaps"])
    assert sorted(report.backwards) == sorted(case["backwards"])
    assert report.lost == case["lost"]
    expect_ok = not (case["overlaps"] or case["backwards"] or case["lost"])
    assert report.ok is expect_ok
    summary = report.summary()
    assert summary.startswith("OK" if expect_ok else "FAIL")
    for o in case["overlaps"]:
        assert f"epoch {o.epoch_b}@{o.node_b}" in summary


def test_detector_split_epoch_is_double_activation():
    events = activation("p1", "n1", 7, 0.0, 5.0) + activation("p1", "n2", 7, 1.0, 4.0)
    report = check(events)
    assert report.activations == 1
    assert report.split_epochs == [SplitEpoch("p1", 7, ("n1", "n2"))]
    assert not report.ok
    assert "claimed by nodes n1, n2" in report.summary()


def test_detector_tolerance():
    events = activation("p1", "n1", 1, 0.0, 5.02) + activation("p1", "n2", 2, 5.0, 9.0)
    assert not check(events).ok
    assert check(events, tolerance=0.05).ok


@pytest.mark.parametrize(
    "bad",
    [
        {"pid": "p", "node": "n", "epoch": 1, "kind": "begin", "t": 0.0},
        {"pid": "p", "node": "n", "epoch": "1", "kind": "start", "t": 0.0},
        {"pid": "p", "node": "n", "epoch": 1, "kind": "start", "t": float("nan")},
        {"pid": "p", "node": "n", "kind": "start", "t": 0.0},
    ],
)
def test_detector_rejects_malformed_events(bad):
    with pytest.raises(ValueError):
        check([bad])


def test_detector_at_scale():
    # 200k events, 20k activations: right at the size of a long run. (How fast it is belongs to benchmarks,
    # not to a wall-clock limit here; the pytest timeout still stops a quadratic blow-up.)
    events = []
    for pid in range(200):
        for epoch in range(100):
            t0 = epoch * 10.0
            events += activation(f"p{pid}", f"n{epoch % 3}", epoch, t0, t0 + 9.0, ticks=[t0 + k for k in range(1, 9)])
    report = check(events, expected_pids={f"p{i}" for i in range(200)}, alive_since=990.0)
    assert report.ok, report.summary()
    assert report.activations == 20000


def _naive(events):
    acts = {}
    for e in events:
        k = (e["pid"], e["epoch"])
        lo, hi, node = acts.get(k, (e["t"], e["t"], e["node"]))
        if e["t"] < lo:
            node = e["node"]
        acts[k] = (min(lo, e["t"]), max(hi, e["t"]), node)
    overlaps, backwards = set(), set()
    for (pa, ea), (fa, la, na) in acts.items():
        for (pb, eb), (fb, _lb, nb) in acts.items():
            if pa != pb:
                continue
            if ea < eb and la > fb:
                overlaps.add((pa, ea, na, eb, nb, la - fb))
            if fa < fb and ea > eb:
                backwards.add((pa, ea, na, fa, eb, nb, fb))
    return overlaps, backwards


_event = st.builds(
    ev,
    pid=st.sampled_from(["p1", "p2"]),
    node=st.just("n"),
    epoch=st.integers(0, 6),
    kind=st.sampled_from(["start", "tick", "stop"]),
    t=st.integers(0, 20).map(float),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_event, max_size=40))
def test_detector_matches_naive(events):
    report = check(events)
    overlaps, backwards = _naive(events)
    assert set(report.overlaps) == overlaps
    assert len(report.overlaps) == len(overlaps)
    assert set(report.backwards) == backwards
    assert len(report.backwards) == len(backwards)
