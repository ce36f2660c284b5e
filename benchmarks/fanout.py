"""Push fan-out: one process pushing to 1,000 WebSocket clients over two web servers, against group_send alone.

``python -m benchmarks.fanout [--quick] [--json] [--clients N]`` prints its rows
in the benchmark table's format; ``run(sizes, cluster)`` returns them for
``benchmarks/run.py``. Set-up: one ``runhub`` node runs the ``Fanout`` process
(benchmarks/processes.py); two ``daphne benchmarks.asgi:application`` web servers
hold the sockets (``ProcessConsumer``: each joins the process's Channels group);
two client OS processes open half the sockets each, one per web server.

Figures, each next to its yardstick measured in the same run (rounds alternate,
the order swapped every round):

* delivery latency: the process pushes ``paced`` messages ``gap`` seconds apart
  (``await self.group_send(...)`` in a handler on the node); a message's latency at
  one socket is its receipt time minus the ``time.monotonic()`` stamped just
  before the send (CLOCK_MONOTONIC is one clock for every process of a Linux
  machine). Yardstick: the same messages sent by this process with the channels_redis
  layer's ``group_send`` alone (``RedisPubSubChannelLayer``, as the settings configure it).
* throughput: a burst of ``burst`` pushes as fast as the sender goes; deliveries
  per second from the first send to the last receipt, against the same burst
  through ``group_send`` alone.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .cluster import BenchCluster, BenchError, Child, wait_for

NODE = "fanout"
TARGET_RATIO = 1.3  # the target: within 1.3x of channels_redis group_send alone


@dataclass
class FanoutSizes:
    clients: int = 1000  # WebSocket clients, half on each web server
    rounds: int = 2  # each round measures processhub and the yardstick once (order swapped every round)
    paced: int = 20  # pushes per latency measurement
    # Seconds between two paced pushes: 1,000 sockets take this machine ~0.2 s to serve (~6,000 deliveries/s),
    # so the latency figure sees one push at a time, not a queue.
    gap: float = 0.5
    burst: int = 50  # pushes per throughput measurement

    @classmethod
    def quick(cls) -> FanoutSizes:
        return cls(clients=100, rounds=1, paced=10, gap=0.05, burst=20)


# ============================================================ the WebSocket clients (a child OS process each)


async def _ws_open(host: str, port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://{host}:{port}\r\n\r\n")
                 .encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise BenchError(f"WebSocket handshake refused: {head[:200]!r}")
    return reader, writer


def _masked(opcode: int, payload: bytes) -> bytes:
    # Client frames must be masked (RFC 6455 5.3); only pongs are ever sent, so payloads are short.
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


class Receiver:
    """Counts the pushes each phase delivered to this process's sockets and keeps their latencies."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, Any]] = {}

    def on_text(self, payload: bytes) -> None:
        now = time.monotonic()
        data = json.loads(payload).get("push")
        if not isinstance(data, dict) or "p" not in data:
            return
        ph = self.phases.setdefault(data["p"], {"n": 0, "lat": [], "first_t": data["t"], "last_recv": now})
        ph["n"] += 1
        ph["lat"].append(now - data["t"])
        ph["first_t"] = min(ph["first_t"], data["t"])
        ph["last_recv"] = max(ph["last_recv"], now)

    async def read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readexactly(2)
            opcode, n = head[0] & 0x0F, head[1] & 0x7F
            if n == 126:
                n = struct.unpack("!H", await reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await reader.readexactly(8))[0]
            payload = await reader.readexactly(n)  # a server's frames are not masked
            if opcode == 1:
                self.on_text(payload)
            elif opcode == 9:  # daphne pings idle sockets; an unanswered ping closes them
                writer.write(_masked(10, payload))
            elif opcode == 8:
                return


async def _client_main(url: str, connections: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, connections + 256)), hard))
    rest = url.split("://", 1)[1]
    hostport, path = rest.split("/", 1)
    host, port = hostport.rsplit(":", 1)
    rx = Receiver()
    sockets = []
    for start in range(0, connections, 50):  # 50 handshakes at a time
        batch = await asyncio.gather(*[_ws_open(host, int(port), "/" + path)
                                       for _ in range(start, min(connections, start + 50))])
        sockets.extend(batch)
    tasks = [asyncio.create_task(rx.read(r, w)) for r, w in sockets]
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while line := (await stdin.readline()).decode().strip():
        cmd, _, phase = line.partition(" ")
        ph = rx.phases.get(phase, {"n": 0, "lat": [], "first_t": None, "last_recv": None})
        if cmd == "count":
            print(ph["n"], flush=True)
        elif cmd == "stats":
            print(json.dumps({**ph, "lat": [round(x, 6) for x in ph["lat"]]}), flush=True)
            rx.phases.pop(phase, None)
    for t in tasks:
        t.cancel()


# ============================================================ the driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


class FanoutRun:
    """One fan-out run on a BenchCluster whose database is set up and whose Django is configured."""

    def __init__(self, sizes: FanoutSizes, cluster: BenchCluster, progress=print) -> None:
        self.s, self.c, self.say = sizes, cluster, progress
        self.pid = f"fan-{uuid.uuid4().hex[:8]}"
        self.clients: list[Child] = []
        self.loop = asyncio.new_event_loop()  # the yardstick's sender, as persistent as the node's loop

    def start(self) -> None:
        from benchmarks.processes import Fanout as FanoutProcess

        self.c.start_node(NODE)
        self.c.wait_up(NODE)
        FanoutProcess.start(self.pid, node=NODE)
        urls = []
        for n in (1, 2):
            port = _free_port()
            web = self.c.spawn(f"fanout-web{n}", ["-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                                                  "benchmarks.asgi:application"])
            wait_for(lambda port=port, web=web: self._listening(port, web), 60, f"web server {n}")
            urls.append(f"ws://127.0.0.1:{port}/ws/fanout/{self.pid}/")
        half = self.s.clients // 2
        for n, (url, count) in enumerate(zip(urls, (half, self.s.clients - half), strict=True), 1):
            self.say(f"fan-out: {count} sockets on web server {n}")
            child = self.c.spawn(f"fanout-client{n}", ["-m", "benchmarks.fanout", "client", url, str(count)],
                                 log=False, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
            self.clients.append(child)
        for child in self.clients:
            line = child.popen.stdout.readline().strip()
            if line != "ready":
                raise BenchError(f"fan-out client {child.name} did not connect (said {line!r})")

    @staticmethod
    def _listening(port: int, web: Child) -> bool:
        if not web.alive():
            raise BenchError(f"web server {web.name} exited:\n{web.output()}")
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return True
        except OSError:
            return False

    def ask(self, child: Child, cmd: str) -> str:
        child.popen.stdin.write(cmd + "\n")
        child.popen.stdin.flush()
        return child.popen.stdout.readline()

    def collect(self, phase: str, expected: int) -> dict[str, Any]:
        """Wait until every socket got every message of ``phase`` (or nothing arrives for 10 s); merge the stats."""
        last, since = -1, time.monotonic()
        while True:
            got = sum(int(self.ask(c, f"count {phase}")) for c in self.clients)
            if got >= expected:
                break
            if got != last:
                last, since = got, time.monotonic()
            elif time.monotonic() - since > 10:
                self.say(f"fan-out: {phase}: {got} of {expected} delivered, no progress for 10 s")
                break
            time.sleep(0.05)
        parts = [json.loads(self.ask(c, f"stats {phase}")) for c in self.clients]
        parts = [p for p in parts if p["n"]]
        return {"n": sum(p["n"] for p in parts), "lat": [x for p in parts for x in p["lat"]],
                "first_t": min(p["first_t"] for p in parts), "last_recv": max(p["last_recv"] for p in parts)}

    def via_process(self, phase: str, n: int, gap: float) -> None:
        from benchmarks.processes import Fanout as FanoutProcess

        FanoutProcess.call(self.pid, {"phase": phase, "n": n, "gap": gap}, timeout=n * gap + 60)

    def via_layer(self, phase: str, n: int, gap: float) -> None:
        from channels.layers import get_channel_layer

        from benchmarks.processes import Fanout as FanoutProcess
        from processhub.push import channel_group

        group = channel_group(FanoutProcess.label, self.pid)

        async def send() -> None:
            layer = get_channel_layer()
            for i in range(n):
                await layer.group_send(group, {"type": "process.push", "data": {"p": phase, "i": i,
                                                                                  "t": time.monotonic()}})
                if gap:
                    await asyncio.sleep(gap)

        self.loop.run_until_complete(send())  # one loop for every phase: the layer keeps its Redis connection

    def measure(self) -> list[Any]:
        from .run import Row

        s = self.s
        lat: dict[str, list[float]] = {"hub": [], "layer": []}
        rate: dict[str, list[float]] = {"hub": [], "layer": []}
        lost = {"hub": 0, "layer": 0}
        send = {"hub": self.via_process, "layer": self.via_layer}
        # Warm-up: every web server subscribed and every path connected before anything counts.
        for who in ("hub", "layer"):
            send[who]("warm" + who, 3, 0.05)
            self.collect("warm" + who, 3 * s.clients)
        for r in range(s.rounds):
            for who in (("hub", "layer") if r % 2 == 0 else ("layer", "hub")):
                phase = f"{who}-paced-{r}"
                send[who](phase, s.paced, s.gap)
                got = self.collect(phase, s.paced * s.clients)
                lat[who].extend(got["lat"])
                lost[who] += s.paced * s.clients - got["n"]
                phase = f"{who}-burst-{r}"
                send[who](phase, s.burst, 0.0)
                got = self.collect(phase, s.burst * s.clients)
                rate[who].append(got["n"] / (got["last_recv"] - got["first_t"]))
                lost[who] += s.burst * s.clients - got["n"]
                self.say(f"fan-out: round {r + 1} {who}: p50 {_pct(lat[who], 0.5) * 1000:.1f} ms, "
                         f"{rate[who][-1]:,.0f} msg/s")
        p50, y50 = _pct(lat["hub"], 0.5), _pct(lat["layer"], 0.5)
        p99, y99 = _pct(lat["hub"], 0.99), _pct(lat["layer"], 0.99)
        hub_rate, layer_rate = sum(rate["hub"]) / s.rounds, sum(rate["layer"]) / s.rounds
        where = f"{s.clients:,} sockets on 2 web servers"
        note = (f"{len(lat['hub']):,} deliveries per figure ({s.rounds} x {s.paced} pushes {s.gap * 1000:.0f} ms apart "
                f"x {s.clients:,} sockets); lost: {lost['hub']} via the process, {lost['layer']} via the layer")
        return [
            Row("fanout_p50", f"push fan-out to {where}: delivery p50", p50 * 1000, "ms",
                "group_send alone p50", y50 * 1000, p50 / y50, f"p50 <= {TARGET_RATIO}x", p50 / y50 <= TARGET_RATIO,
                note),
            Row("fanout_p99", f"push fan-out to {where}: delivery p99", p99 * 1000, "ms",
                "group_send alone p99", y99 * 1000, p99 / y99),
            Row("fanout_rate", f"push fan-out to {where}: deliveries", hub_rate, "msg/s",
                "group_send alone", layer_rate, hub_rate / layer_rate, f">= {1 / TARGET_RATIO:.2f}x",
                hub_rate / layer_rate >= 1 / TARGET_RATIO,
                f"bursts of {s.burst} pushes x {s.clients:,} sockets, first send to last receipt, mean of {s.rounds}"),
        ]

    def stop(self) -> None:
        self.loop.close()
        for child in self.clients:
            if child.alive():
                try:
                    child.popen.stdin.close()  # an empty line ends the client
                except OSError:
                    pass


def run(sizes: FanoutSizes | None = None, cluster: BenchCluster | None = None, progress=print) -> list[Any]:
    """Measure the fan-out rows on ``cluster`` (set up, with Django configured), or on a cluster of its own.

    With a cluster of the main benchmark (benchmarks/run.py) it starts one more node
    (``fanout``), two web servers and two client processes there; they end with the cluster.
    """
    sizes = sizes or FanoutSizes()
    if cluster is not None:
        bench = FanoutRun(sizes, cluster, progress)
        try:
            bench.start()
            return bench.measure()
        finally:
            bench.stop()
    from .run import Benchmark, Sizes

    log_dir = Path(tempfile.gettempdir()) / f"processhub-fanout-{uuid.uuid4().hex[:6]}"
    main = Benchmark(Sizes(settings={}), log_dir, progress)  # its set-up: database, migrations, Django
    try:
        main.setup()
        return run(sizes, main.c, progress)
    finally:
        main.cleanup()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        asyncio.run(_client_main(argv[1], int(argv[2])))
        return 0
    p = argparse.ArgumentParser(prog="python -m benchmarks.fanout", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="100 sockets, one short round (smoke run)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--clients", type=int, default=None, help="WebSocket clients (default 1000)")
    ns = p.parse_args(argv)
    sizes = FanoutSizes.quick() if ns.quick else FanoutSizes()
    if ns.clients:
        sizes.clients = ns.clients

    def progress(msg: str) -> None:
        print(f"benchmarks: {msg}", file=sys.stderr, flush=True)

    started = time.monotonic()
    try:
        rows = run(sizes, progress=progress)
    except BenchError as exc:
        print(f"benchmarks: {exc}", file=sys.stderr)
        return 1
    if ns.json:
        print(json.dumps({"rows": [asdict(r) for r in rows], "sizes": asdict(sizes)}, indent=2))
    else:
        from .run import table

        print(table(rows))
        print(f"\n{time.monotonic() - started:.1f} s, load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
