"""Measure processhub on a throwaway cluster and print one table (``--json`` for machines).

The machine is shared and noisy, so every figure is measured in the same run as
its yardstick (round trips are interleaved with theirs in several rounds) and
compared as a ratio. Phases (``--only`` takes their names):

0. ``transports``: design comparisons without a cluster: raw redis-py RPUSH/BLPOP, processhub's
   RedisTransport, channels_redis RedisPubSubChannelLayer and RedisChannelLayer
   (one persistent loop; and a fresh ``async_to_sync`` per call), LPUSH rate;
1. one node alone: ``idle``: RSS and idle CPU with 10,000 then 100,000 idle processes
   (rows inserted in bulk and activated by the node's reconcile); ``passivation``: RSS
   empty, with 100,000 processes of an idle_timeout class active, and after they passivated;
2. three nodes: ``calls`` (call/acall round trips and the envelope signing cost per call),
   ``fetch``, ``casts``, ``activation`` (single starts), ``start_many``, ``failover`` (a
   fourth node owning 1,000 processes, SIGKILL), ``failover_scale`` (one owning 10,000),
   ``reactivation`` (a call to a passivated process);
3. ``listing``: ``hub.process_list(tag=...)`` over 1,000,000 rows (benchmarks/listing.py);
4. ``rolling``: rolling restart of 5 actively rebalancing nodes under call load (benchmarks/rolling.py);
5. ``fanout``: push fan-out to 1,000 WebSockets (benchmarks/fanout.py), last: it starts servers of its own.

Nothing here asserts: ``tests/test_benchmarks_smoke.py`` runs ``--quick`` only
to keep the script working.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .cluster import BenchCluster, BenchError, cpu_seconds, rss_bytes, wait_for

# The timings of the quick (smoke) run: failover in seconds, not NODE_TTL=5.
FAST = {"HEARTBEAT_INTERVAL": 0.2, "NODE_TTL": 1.5, "LEASE_SAFETY_MARGIN": 0.3, "RECONCILE_INTERVAL": 0.25}
DEFAULT_TTL = 5.0


@dataclass
class Sizes:
    rounds: int = 5  # round-trip figures alternate with their yardstick this many times
    round_trips: int = 600  # per round and figure
    design_round_trips: int = 2000
    a2s_calls: int = 20
    casters: int = 4
    casts_each: int = 5000
    activations: int = 10_000
    start_many: int = 10_000  # ids in one start_many() call
    failover: int = 1_000
    failover_scale: int = 10_000  # rows owned by the node that is killed in the failover-at-scale figure
    idle_processes: int = 10_000
    memory_processes: int = 100_000
    passivated: int = 100_000  # processes on the node whose memory is read before and after they passivate
    passivation_hold: float = 25.0  # that node's IDLE_TIMEOUT: longer than activating them all takes
    idle_window: float = 30.0  # = FULL_RESYNC_INTERVAL, so one full resync falls in every window
    fetch_warm: int = 20_000
    fetch_cold: int = 2_000
    signing_iterations: int = 20_000  # seal/open of each envelope per timing round
    reactivations: int = 300  # idle processes revived by a call (each timed next to a warm call)
    list_rows: int = 1_000_000
    list_needles: int = 1_000  # of list_rows, those tagged "needle"
    list_runs: int = 20
    rolling_nodes: int = 5
    rolling_processes: int = 5_000
    rolling_settle: float = 30.0  # seconds after the last node is back until the balance is read
    rolling_rate: float = 200.0  # calls per second of the steady load during the rolling restart
    concurrency: int = 500  # astart() in flight during the activation figure (split among the starters)
    starters: int = 1  # client OS processes that start the activations (1: this one)
    settings: dict = field(default_factory=dict)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(rounds=2, round_trips=40, design_round_trips=60, a2s_calls=2, casters=2, casts_each=100,
                   activations=300, start_many=300, failover=40, failover_scale=300, idle_processes=300,
                   memory_processes=1_000, passivated=1_000, passivation_hold=3.0, idle_window=1.0, fetch_warm=300,
                   fetch_cold=40, signing_iterations=2_000, reactivations=20, list_rows=20_000, list_needles=100,
                   list_runs=5, rolling_nodes=3, rolling_processes=300, rolling_settle=5.0, rolling_rate=50.0,
                   settings=dict(FAST))


@dataclass
class Row:
    key: str
    figure: str
    value: float | None
    unit: str
    yardstick: str = "-"
    yard_value: float | None = None
    ratio: float | None = None
    target: str = "-"
    ok: bool | None = None  # None: a figure without a target
    note: str = ""
    yard_unit: str | None = None  # the yardstick's unit when it is not the figure's
    ratio_unit: str = "x"  # "%": the ratio is shown as a percentage


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def ms(seconds: float) -> float:
    return seconds * 1000.0


class Benchmark:
    def __init__(self, sizes: Sizes, log_dir: Path, progress: Callable[[str], None], quick: bool = False) -> None:
        self.sizes = sizes
        self.quick = quick  # only the fan-out phase reads it (its sizes are its own: benchmarks/fanout.py)
        self.say = progress
        database_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/processhub")
        if not database_url.startswith("postgres"):
            raise BenchError("the benchmark needs DATABASE_URL to name a PostgreSQL server")
        redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
        self.c = BenchCluster(database_url, redis_url, sizes.settings, log_dir)
        self.ttl = float(sizes.settings.get("NODE_TTL", DEFAULT_TTL))
        self.rows: dict[str, Row] = {}
        self.meta: dict[str, Any] = {}
        self._redis = None
        self._keys: list[str] = []

    # ============================================================ set-up

    def setup(self) -> None:
        import redis

        self._redis = redis.Redis.from_url(self.c.redis_url, socket_timeout=10)
        self._redis.ping()
        self.say(f"database {self.c.db_name}, prefix {self.c.prefix}")
        self.meta.update(database=self.c.db_name, prefix=self.c.prefix)
        self.c.setup_database()
        os.environ.update(self.c.env())
        import django

        django.setup()

    def cleanup(self) -> None:
        try:
            from processhub.runtime import reset_runtime

            reset_runtime(shutdown=False)
        except Exception:  # noqa: BLE001 - Django may not be set up when set-up failed
            pass
        self.c.stop_all()
        if self._redis is not None and self._keys:
            self._redis.delete(*self._keys)
        try:
            self.c.drop()
        except Exception as exc:  # noqa: BLE001 - report, do not mask the benchmark's own error
            print(f"benchmarks: could not drop {self.c.db_name}: {exc}", file=sys.stderr)

    def key(self, name: str) -> str:
        k = f"{self.c.prefix}:{name}"
        self._keys.append(k)
        return k

    def add(self, row: Row) -> None:
        self.rows[row.key] = row

    # ============================================================ phase 0: transports side by side

    def raw_round_trips(self, n: int, key_in: str, key_out: str) -> list[float]:
        r = self._redis
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            r.rpush(key_in, b"%d" % i)
            r.blpop([key_out], timeout=5)
            out.append(time.perf_counter() - t0)
        return out

    def lpush_rate(self, n: int) -> float:
        r = self._redis
        k = self.key("lpush")
        t0 = time.perf_counter()
        for i in range(n):
            r.lpush(k, b"%d" % i)
        rate = n / (time.perf_counter() - t0)
        r.delete(k)
        return rate

    async def _transport_round_trips(self, channel: str, kind: str, n: int) -> list[float]:
        from .workers import make_transport

        t = make_transport(kind, self.c.redis_url)
        await t.start()
        reply = f"{self.c.prefix}.bench.reply"
        loop = asyncio.get_running_loop()
        box: list[asyncio.Future] = []

        def on_reply(data: bytes) -> None:
            if box and not box[0].done():
                box[0].set_result(data)

        await t.subscribe(reply, on_reply)
        out = []
        try:
            for i in range(n):
                t0 = time.perf_counter()
                box[:] = [loop.create_future()]
                await t.publish(channel, f"{reply}|{i}".encode())
                await asyncio.wait_for(box[0], 5)
                out.append(time.perf_counter() - t0)
            await t.publish(channel, b"stop")
        finally:
            await t.close()
        return out

    async def _layer_round_trips(self, layer, channel: str, n: int) -> list[float]:
        reply = await layer.new_channel()
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            await layer.send(channel, {"type": "bench.echo", "reply": reply, "i": i})
            await asyncio.wait_for(layer.receive(reply), 5)
            out.append(time.perf_counter() - t0)
        return out

    def _a2s_round_trips(self, layer, channel: str, n: int) -> list[float]:
        from asgiref.sync import async_to_sync

        async def once(i: int) -> None:
            reply = await layer.new_channel()
            await layer.send(channel, {"type": "bench.echo", "reply": reply, "i": i})
            await asyncio.wait_for(layer.receive(reply), 5)

        out = []
        for i in range(n):
            t0 = time.perf_counter()
            async_to_sync(once)(i)
            out.append(time.perf_counter() - t0)
        return out

    def phase_transports(self) -> None:
        s = self.sizes
        self.say("phase 0: raw Redis, processhub transport, channel layers")
        raw0 = self.raw_round_trips(s.design_round_trips, self.raw_in, self.raw_out)

        tr = {}
        for kind in ("current", "legacy"):
            ch = f"{self.c.prefix}.bench.techo.{kind}"
            self.c.worker(f"transportecho-{kind}", "transportecho", ch, kind)
            tr[kind] = asyncio.run(self._transport_round_trips(ch, kind, s.design_round_trips))

        from .workers import make_layer

        layer_rts: dict[str, list[float]] = {}
        a2s_rts: dict[str, list[float]] = {}
        for flavour in ("pubsub", "core"):
            ch = f"{self.c.prefix}.bench.lecho.{flavour}"
            echo = self.c.worker(f"layerecho-{flavour}", "layerecho", flavour, ch)

            async def persistent(flavour: str = flavour, ch: str = ch) -> list[float]:
                layer = make_layer(flavour, self.c.redis_url)
                await self._layer_round_trips(layer, ch, 20)  # warm up
                got = await self._layer_round_trips(layer, ch, s.design_round_trips)
                if hasattr(layer, "flush"):
                    await layer.flush()
                return got

            layer_rts[flavour] = asyncio.run(persistent())
            a2s_rts[flavour] = self._a2s_round_trips(make_layer(flavour, self.c.redis_url), ch, s.a2s_calls)

            async def stop(flavour: str = flavour, ch: str = ch) -> None:
                layer = make_layer(flavour, self.c.redis_url)
                await layer.send(ch, {"type": "bench.stop", "stop": True})
                if hasattr(layer, "flush"):
                    await layer.flush()

            asyncio.run(stop())
            echo.popen.wait(10)
        raw1 = self.raw_round_trips(s.design_round_trips, self.raw_in, self.raw_out)
        raw = raw0 + raw1
        yard = statistics.median(raw)
        self.meta["raw_round_trip_p50_ms_phase0"] = ms(yard)

        def design(key: str, what: str, values: list[float], note: str = "") -> None:
            p50 = statistics.median(values)
            self.add(Row(key, what, ms(p50), "ms", "raw RPUSH/BLPOP p50", ms(yard), p50 / yard,
                         note=note or f"p99 {ms(pct(values, 0.99)):.3f} ms, n={len(values)}"))

        design("design_transport", "processhub RedisTransport round trip p50 (asyncio protocol)", tr["current"])
        design("design_legacy_transport", "before: redis.asyncio pool + PubSub reader task, p50", tr["legacy"])
        design("design_pubsub_layer", "RedisPubSubChannelLayer round trip p50, persistent loop", layer_rts["pubsub"])
        design("design_core_layer", "RedisChannelLayer round trip p50, persistent loop", layer_rts["core"])
        design("design_pubsub_a2s", "RedisPubSubChannelLayer, fresh async_to_sync per call", a2s_rts["pubsub"])
        design("design_core_a2s", "RedisChannelLayer, fresh async_to_sync per call", a2s_rts["core"])

    # ============================================================ phase 1: one node, idle processes

    def insert_owned(self, node_id: str, start: int, stop: int, prefix: str = "mem-", label: str | None = None) -> int:
        """Rows [start, stop) owned by ``node_id`` at epoch 1, as a takeover would leave them; returns the largest
        row id before them (so ``id > that`` selects them)."""
        from django.db import connection

        from processhub.models import Process

        from .processes import Bench

        with connection.cursor() as cur:
            cur.execute(f"SELECT coalesce(max(id), 0) FROM {Process._meta.db_table}")
            before = cur.fetchone()[0]
            cur.execute(
                f"INSERT INTO {Process._meta.db_table} (label, process_id, arg, node_id, epoch, status, restart, "
                "restarts, last_error, started_at, updated_at, metadata, tags, groups, guided) "
                "SELECT %s, %s || g, to_jsonb(%s || g), %s, 1, 'running', 'permanent', 0, '', now(), now(), "
                "'{}'::jsonb, '[]'::jsonb, '[]'::jsonb, false FROM generate_series(%s, %s) AS g",
                [label or Bench.label, prefix, prefix, node_id, start, stop - 1],
            )
        return before

    def slots_on(self, pid: str) -> int:
        from .processes import Bench

        return int(Bench.call(pid, {"op": "stats"}, timeout=10)["slots"])

    def phase_idle_node(self) -> None:
        s = self.sizes
        self.say("phase 1: one node, idle processes (memory, idle CPU)")
        node = self.c.start_node("m")
        node_id = self.c.wait_up("m")
        time.sleep(1.0 + 2 * float(s.settings.get("RECONCILE_INTERVAL", 1.0)))  # let imports and pools settle
        base_rss = rss_bytes(node.pid)
        cpu0, t0 = cpu_seconds(node.pid), time.monotonic()
        time.sleep(s.idle_window)
        cpu_empty = (cpu_seconds(node.pid) - cpu0) / (time.monotonic() - t0)

        self.insert_owned(node_id, 0, s.idle_processes)
        wait_for(lambda: self.slots_on("mem-0") >= s.idle_processes, 120, "the node to activate the idle processes",
                 interval=0.5)
        time.sleep(1.0)
        cpu0, t0 = cpu_seconds(node.pid), time.monotonic()
        time.sleep(s.idle_window)
        cpu_idle = (cpu_seconds(node.pid) - cpu0) / (time.monotonic() - t0)
        rss_idle = rss_bytes(node.pid)

        self.insert_owned(node_id, s.idle_processes, s.memory_processes)
        t_act = time.monotonic()
        wait_for(lambda: self.slots_on("mem-0") >= s.memory_processes, 300,
                 "the node to activate the memory processes", interval=0.5)
        act_seconds = time.monotonic() - t_act
        time.sleep(2.0)
        rss_full = rss_bytes(node.pid)
        cpu0, t0 = cpu_seconds(node.pid), time.monotonic()
        time.sleep(s.idle_window)
        cpu_full = (cpu_seconds(node.pid) - cpu0) / (time.monotonic() - t0)
        rss_after = rss_bytes(node.pid)
        per = (min(rss_full, rss_after) - base_rss) / s.memory_processes

        self.add(Row("memory_per_process", f"memory per idle process ({s.memory_processes:,} on one node)", per,
                     "B", target="<= 4 KiB", ok=per <= 4096,
                     note=f"RSS {base_rss / 2**20:.0f} MiB empty, {rss_idle / 2**20:.0f} MiB at "
                          f"{s.idle_processes:,}, {rss_full / 2**20:.0f} MiB at {s.memory_processes:,}"))
        # Every node scans all its activations every half of the shortest idle_timeout of the registered
        # classes (processhub/node/passivation.py), also when the ones it holds have none: say so.
        from .processes import Sleepy

        scan = (f"; benchmarks.Sleepy (idle_timeout {Sleepy.idle_timeout:g} s) is registered, so the passivation "
                f"loop scans the activations every {min(10.0, max(0.2, Sleepy.idle_timeout / 2)):g} s")
        self.add(Row("idle_cpu", f"idle CPU of a node holding {s.idle_processes:,} processes", 100 * cpu_idle,
                     "% core", "same node empty", 100 * cpu_empty, None, "<= 2% of one core",
                     100 * cpu_idle <= 2.0, note=f"{s.idle_window:.0f} s window{scan}"))
        self.add(Row("idle_cpu_big", f"idle CPU of a node holding {s.memory_processes:,} processes",
                     100 * cpu_full, "% core", note=f"{s.idle_window:.0f} s window{scan}"))
        self.add(Row("reconcile_activation", f"reconcile activating {s.memory_processes - s.idle_processes:,} rows "
                     "on one node", (s.memory_processes - s.idle_processes) / act_seconds, "/s",
                     note="rows inserted in bulk, found by the node's digest query"))

        self.retire("m")

    def retire(self, *names: str) -> None:
        """Kill nodes and mark their rows stopped and them down, so no other node takes their processes over."""
        from django.db.models.functions import Now

        from processhub.models import Node, NodeStatus, Process, ProcessStatus
        from processhub.runtime import get_runtime

        for name in names:
            node = self.c.nodes.pop(name, None)
            if node is not None:
                node.kill()
                node.popen.wait(10)
        Process.objects.filter(node__name__in=names, status=ProcessStatus.RUNNING).update(
            status=ProcessStatus.STOPPED, node=None)
        Node.objects.filter(name__in=names).exclude(status=NodeStatus.DOWN).update(
            status=NodeStatus.DOWN, stopped_at=Now(), lease_expires_at=Now())
        get_runtime().client.cache.clear()

    def phase_passivation(self) -> None:
        """One node alone: RSS empty, with every process of an idle_timeout class active, and after they passivated;
        once with CPython's allocator (the figure), once with PYTHONMALLOC=malloc (what the README suggests)."""
        self.passivation_round("passivation_memory", "")
        self.passivation_round("passivation_memory_malloc", "malloc")

    def passivation_round(self, key: str, allocator: str) -> None:
        from processhub.models import Node, NodeStatus, Process, ProcessStatus

        from .processes import Dozy

        s = self.sizes
        n = s.passivated
        how = f" with PYTHONMALLOC={allocator}" if allocator else ""
        self.say(f"phase 1: one node{how}, {n:,} processes that passivate after {s.passivation_hold:.0f} s (memory)")
        node = self.c.start_node("p", settings={"IDLE_TIMEOUT": s.passivation_hold},
                                 environ={"PYTHONMALLOC": allocator} if allocator else None)
        node_id = self.c.wait_up("p")
        time.sleep(1.0 + 2 * float(s.settings.get("RECONCILE_INTERVAL", 1.0)))  # let imports and pools settle
        rss_empty = rss_bytes(node.pid)
        first = self.insert_owned(node_id, 0, n, prefix=f"doze{allocator}-", label=Dozy.label)
        t0 = time.monotonic()
        idle = Process.objects.filter(id__gt=first, status=ProcessStatus.IDLE)

        def load() -> int:
            return Node.objects.filter(id=node_id).values_list("load", flat=True).first() or 0

        def lost() -> str | None:
            """Why the node's incarnation ended (it fenced itself or exited), or None while it serves."""
            if not node.alive():
                return f"exited with status {node.popen.returncode}"
            if Node.objects.filter(id=node_id).exclude(status=NodeStatus.UP).exists():
                return "fenced (its incarnation is down)"
            return None

        def until(cond: Callable[[], Any], timeout: float, what: str) -> str | None:
            """Wait for ``cond``; the reason instead if the node's incarnation ends first."""
            deadline = time.monotonic() + timeout
            while not cond():
                if (why := lost()) is not None:
                    return why
                if time.monotonic() > deadline:
                    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
                time.sleep(0.2)
            return None

        # The node reports its activations with every heartbeat: wait until all run at once (or the first
        # passivated, when activating them took longer than the hold), then read the RSS.
        peak = 0

        def all_active() -> bool:
            nonlocal peak
            peak = max(peak, load())
            return peak >= n or idle.exists()

        why = until(all_active, s.passivation_hold + 300, f"node p to activate {n:,} processes")
        activated = time.monotonic() - t0
        rss_full = rss_bytes(node.pid) if node.alive() else 0
        t_first = time.monotonic()
        why = why or until(idle.exists, s.passivation_hold + 60, "the first process to passivate")
        t_first = time.monotonic() if why is None else t_first
        why = why or until(lambda: idle.count() >= n, 900, f"all {n:,} processes to passivate")
        passivated = time.monotonic() - t_first
        why = why or until(lambda: load() == 0, 60, "node p to report no activations")
        mib = 2 ** 20
        if why is None:
            time.sleep(3.0)  # the passivation loop trims freed memory on its first pass that finds nobody idle
            rss_after = rss_bytes(node.pid)
            outcome = f"{n:,} passivated in {passivated:.1f} s ({n / passivated:,.0f}/s)"
        else:
            rss_after = rss_bytes(node.pid) if node.alive() else rss_full
            outcome = (f"the node's incarnation ended {passivated:.1f} s into the passivation, {why}, with "
                       f"{idle.count():,} of {n:,} rows idle; the value is its RSS then")
        first_row = not allocator
        self.add(Row(key, f"RSS of a node after {n:,} processes passivated{how}", rss_after / mib, "MiB",
                     "same node empty", rss_empty / mib, rss_after / rss_empty,
                     "<= 1.10x empty" if first_row else "-",
                     (why is None and rss_after <= 1.10 * rss_empty) if first_row else None,
                     note=f"RSS {rss_empty / mib:.1f} MiB empty, {rss_full / mib:.1f} MiB with {peak:,} active "
                          f"(all active {activated:.1f} s after the insert), {rss_after / mib:.1f} MiB after; "
                          f"{outcome}; IDLE_TIMEOUT {s.passivation_hold:.0f} s; the node keeps no per-process "
                          "cache of idle rows"))
        self.retire("p")

    # ============================================================ phase 2: three nodes

    def sync_calls(self, pid: str, n: int) -> list[float]:
        from .processes import Bench

        out = []
        for i in range(n):
            t0 = time.perf_counter()
            Bench.call(pid, i)
            out.append(time.perf_counter() - t0)
        return out

    @staticmethod
    async def async_calls(pid: str, n: int) -> list[float]:
        from .processes import Bench

        out = []
        for i in range(n):
            t0 = time.perf_counter()
            await Bench.acall(pid, i)
            out.append(time.perf_counter() - t0)
        return out

    def phase_calls(self) -> None:
        from processhub.runtime import get_runtime

        from .processes import Bench

        s = self.sizes
        self.say("phase 2: call/acall round trips")
        rt = get_runtime()
        pid = "rt-0"
        ref = Bench.start(pid)
        self.meta["round_trip_process_node"] = ref.node
        foreign = asyncio.new_event_loop()
        raw, sync, foreign_a, hub_a = [], [], [], []
        self.sync_calls(pid, 50)
        foreign.run_until_complete(self.async_calls(pid, 50))
        rt.run_sync(self.async_calls(pid, 50))
        for _ in range(s.rounds):
            raw += self.raw_round_trips(s.round_trips, self.raw_in, self.raw_out)
            sync += self.sync_calls(pid, s.round_trips)
            foreign_a += foreign.run_until_complete(self.async_calls(pid, s.round_trips))
            hub_a += rt.run_sync(self.async_calls(pid, s.round_trips))
        foreign.close()
        y50, y99 = statistics.median(raw), pct(raw, 0.99)
        self.meta["raw_round_trip_p50_ms"] = ms(y50)

        def add(key: str, what: str, values: list[float], q: float, target: float | None) -> None:
            v = statistics.median(values) if q == 0.5 else pct(values, q)
            y = y50 if q == 0.5 else y99
            self.add(Row(key, what, ms(v), "ms", f"raw RPUSH/BLPOP p{int(q * 100)}", ms(y), v / y,
                         f"p50 <= {target}x" if target else "-", None if target is None else v / y <= target,
                         note=f"n={len(values)}"))

        add("call_p50", "sync call() round trip p50", sync, 0.5, 2.0)
        add("call_p99", "sync call() round trip p99", sync, 0.99, None)
        add("acall_p50", "async acall() round trip p50 (caller's own loop)", foreign_a, 0.5, 1.5)
        add("acall_p99", "async acall() round trip p99 (caller's own loop)", foreign_a, 0.99, None)
        add("acall_hub_p50", "async acall() p50 on the hub's loop (inside a node)", hub_a, 0.5, None)

        # The MAC on every envelope: timed in-process on the request and reply of real sync calls.
        from . import signing

        with signing.captured(rt.client.reply_channel) as seen:
            self.sync_calls(pid, 20)
        if {"request", "reply"} - set(seen):
            raise BenchError(f"the sync calls sealed or opened no call envelope (saw {sorted(seen)})")
        per_call, note = signing.cost(seen, s.signing_iterations)
        p50 = statistics.median(sync)
        self.add(Row("envelope_cost", "envelope signing per sync call() (seal + open, request and reply)",
                     per_call * 1e6, "us", "sync call() p50", ms(p50), per_call / p50, "<= 5% of call p50",
                     per_call / p50 <= 0.05, note=note, yard_unit="ms", ratio_unit="%"))

    def phase_fetch(self) -> None:
        import psycopg

        from processhub.models import Process
        from processhub.runtime import get_runtime

        from .processes import Bench

        s = self.sizes
        self.say("phase 2: fetch")
        rt = get_runtime()
        pid = "rt-0"
        Bench.start(pid)
        Bench.fetch(pid)
        warm = []
        for _ in range(s.fetch_warm):
            t0 = time.perf_counter()
            Bench.fetch(pid)
            warm.append(time.perf_counter() - t0)
        cold, pg = [], []
        sql = f"SELECT id, epoch, node_id, status FROM {Process._meta.db_table} WHERE label = %s AND process_id = %s"
        with psycopg.connect(self.c.database_url, autocommit=True) as conn:
            for _ in range(20):
                conn.execute(sql, (Bench.label, pid)).fetchone()
            for _ in range(s.fetch_cold):
                rt.client.cache.clear()
                t0 = time.perf_counter()
                ref = Bench.fetch(pid)
                cold.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                conn.execute(sql, (Bench.label, pid)).fetchone()
                pg.append(time.perf_counter() - t0)
        if ref is None:
            raise BenchError("a cold fetch found nothing")
        y = statistics.median(pg)
        w50, c50 = statistics.median(warm), statistics.median(cold)
        self.add(Row("fetch_warm", "fetch() p50, warm cache", w50 * 1e6, "us", "PostgreSQL indexed SELECT p50",
                     y * 1e6, w50 / y, "warm <= 20 us", w50 * 1e6 <= 20,
                     note=f"p99 {pct(warm, 0.99) * 1e6:.1f} us, n={len(warm)}"))
        self.add(Row("fetch_cold", "fetch() p50, cold (database)", c50 * 1e6, "us", "PostgreSQL indexed SELECT p50",
                     y * 1e6, c50 / y, note=f"p99 {pct(cold, 0.99) * 1e6:.0f} us, n={len(cold)}"))

    def phase_casts(self) -> None:
        from .processes import Bench

        s = self.sizes
        self.say("phase 2: cast throughput")
        pids = [f"cast-{i}" for i in range(s.casters)]
        for pid in pids:
            Bench.start(pid, node="a")
        casters = [self.c.worker(f"caster{i}", "caster", pid, str(s.casts_each), stdin=True)
                   for i, pid in enumerate(pids)]
        yard0 = self.lpush_rate(s.casts_each)
        t0 = time.perf_counter()
        for c in casters:
            c.popen.stdin.write("go\n")
            c.popen.stdin.flush()
        sent = []
        for c in casters:
            line = c.popen.stdout.readline().split()
            if not line or line[0] != "done":
                raise BenchError(f"caster {c.name} failed")
            sent.append(float(line[1]))
            c.popen.wait(30)
        total = 0
        for pid in pids:
            total += Bench.call(pid, {"op": "stats"})["casts"]  # after every cast: FIFO per channel
        elapsed = time.perf_counter() - t0
        yard1 = self.lpush_rate(s.casts_each)
        rate = total / elapsed
        yard = (yard0 + yard1) / 2
        self.add(Row("cast_rate", f"cast throughput into one node ({s.casters} caller processes)", rate, "msg/s",
                     "raw LPUSH rate, one client", yard, rate / yard, ">= 0.5x", rate / yard >= 0.5,
                     note=f"{total:,} of {s.casters * s.casts_each:,} handled; per caller "
                          f"{statistics.mean(s.casts_each / x for x in sent):,.0f}/s"))

    def bulk_insert_rate(self, n: int) -> float:
        import psycopg

        from processhub.conf import hub_settings
        from processhub.models import Process

        batch = hub_settings().BATCH_SIZE
        table = Process._meta.db_table
        with psycopg.connect(self.c.database_url, autocommit=True) as conn:
            conn.execute(f"CREATE TEMP TABLE bench_insert (LIKE {table} INCLUDING ALL)")
            t0 = time.perf_counter()
            for i in range(0, n, batch):
                rows = range(i, min(n, i + batch))
                values = ",".join(["(%s, %s, %s::jsonb, 1, 'running', 'permanent', 0, '', now(), now(), '{}', "
                                   "'[]', '[]', false)"] * len(rows))
                params: list[Any] = []
                for j in rows:
                    params += ["benchmarks.Bench", f"ins-{j}", json.dumps(f"ins-{j}")]
                conn.execute(
                    f"INSERT INTO bench_insert (label, process_id, arg, epoch, status, restart, restarts, "
                    f"last_error, started_at, updated_at, metadata, tags, groups, guided) VALUES {values} "
                    f"ON CONFLICT (label, process_id) DO NOTHING RETURNING id", params)
            return n / (time.perf_counter() - t0)

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds so far of the clients (this process and helpers), the nodes, our PostgreSQL backends, Redis.

        Redis is shared with whatever else runs on the machine, so its share is an upper bound.
        """
        from django.db import connection

        out = {"client": cpu_seconds(os.getpid()), "nodes": 0.0, "PostgreSQL": 0.0, "Redis": 0.0}
        for child in self.c.children:
            if not child.alive():
                continue
            role = "nodes" if child in self.c.nodes.values() else "client"
            try:
                out[role] += cpu_seconds(child.pid)
            except (OSError, BenchError):
                pass
        with connection.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            pg = [r[0] for r in cur.fetchall()]
        redis_pid = self._redis.info("server").get("process_id")
        for role, pids in (("PostgreSQL", pg), ("Redis", [redis_pid] if redis_pid else [])):
            for pid in pids:
                try:
                    out[role] += cpu_seconds(int(pid))
                except (OSError, ValueError):
                    pass
        return out

    def phase_activation(self) -> None:
        from processhub.runtime import get_runtime

        from .processes import Bench

        s = self.sizes
        self.say(f"phase 2: activation of {s.activations:,} processes")
        yard0 = self.bulk_insert_rate(s.activations)

        async def go() -> float:
            it = iter(range(s.activations))

            async def worker() -> None:
                for i in it:
                    await Bench.astart(f"act-{i}", timeout=60)

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(min(s.concurrency, s.activations))))
            return time.perf_counter() - t0

        cpu0 = self.cpu_by_role()
        if s.starters <= 1:
            elapsed = get_runtime().run_sync(go())
        else:
            share = -(-s.activations // s.starters)
            workers = [self.c.worker(f"starter{i}", "starter", str(i * share),
                                     str(max(0, min(share, s.activations - i * share))),
                                     str(max(1, s.concurrency // s.starters)), stdin=True)
                       for i in range(s.starters)]
            t0 = time.perf_counter()
            for w in workers:
                w.popen.stdin.write("go\n")
                w.popen.stdin.flush()
            for w in workers:
                line = w.popen.stdout.readline().split()
                if not line or line[0] != "done":
                    raise BenchError(f"starter {w.name} failed")
                w.popen.wait(30)
            elapsed = time.perf_counter() - t0
        cpu1 = self.cpu_by_role()
        per = {k: (cpu1.get(k, 0.0) - cpu0.get(k, 0.0)) / s.activations * 1e6 for k in cpu1}
        total = sum(per.values())
        yard1 = self.bulk_insert_rate(s.activations)
        rate = s.activations / elapsed
        from django.db.models import Count

        from processhub.models import Process

        spread = dict(Process.objects.filter(process_id__startswith="act-", status="running")
                      .values_list("node__name").annotate(n=Count("id")))
        who = "one client" if s.starters <= 1 else f"{s.starters} client processes"
        self.add(Row("activation_rate", f"activation: {s.activations:,} starts across 3 nodes ({who})", rate, "/s",
                     "bulk INSERT rate, same rows", (yard0 + yard1) / 2, rate / ((yard0 + yard1) / 2),
                     ">= 10,000/s", rate >= 10_000,
                     note=f"{elapsed:.2f} s, {s.concurrency} concurrent astart(); per node {spread}; CPU per start: "
                          + ", ".join(f"{k} {v:.0f} us" for k, v in per.items())
                          + f" = {total:.0f} us, so {os.cpu_count()} idle cores would allow at most "
                          f"{os.cpu_count() * 1e6 / total:,.0f}/s" if total else ""))

    def phase_start_many(self) -> None:
        from collections import Counter

        from .processes import Bench

        s = self.sizes
        self.say(f"phase 2: start_many of {s.start_many:,} processes")
        yard0 = self.bulk_insert_rate(s.start_many)
        ids = [f"many-{i}" for i in range(s.start_many)]
        cpu0 = self.cpu_by_role()
        t0 = time.perf_counter()
        result = Bench.start_many(ids, timeout=max(60.0, s.start_many / 100))
        elapsed = time.perf_counter() - t0
        cpu1 = self.cpu_by_role()
        yard1 = self.bulk_insert_rate(s.start_many)
        started = sum(1 for r in result.refs.values() if r.created)
        rate, yard = started / elapsed, (yard0 + yard1) / 2
        per = {k: (cpu1.get(k, 0.0) - cpu0.get(k, 0.0)) / max(1, started) * 1e6 for k in cpu1}
        spread = dict(sorted(Counter(r.node for r in result.refs.values()).items()))
        errors = dict(Counter(type(e).__name__ for e in result.errors.values()))
        self.add(Row("start_many_rate", f"start_many(): {s.start_many:,} ids across 3 nodes (one call, one client)",
                     rate, "/s", "bulk INSERT rate, same rows", yard, rate / yard, ">= 20,000/s and >= 0.5x",
                     rate >= 20_000 and rate / yard >= 0.5,
                     note=f"{elapsed:.2f} s; {started:,} created, errors {errors or 'none'}; per node {spread}; "
                          "CPU per start: " + ", ".join(f"{k} {v:.0f} us" for k, v in per.items())
                          + f" = {sum(per.values()):.0f} us"))

    def phase_failover(self) -> None:
        from processhub.exceptions import ProcessHubError
        from processhub.runtime import get_runtime

        from .processes import Bench

        s = self.sizes
        self.say(f"phase 2: failover of a node owning {s.failover:,} processes")
        victim = self.c.start_node("d")
        self.c.wait_up("d")
        rt = get_runtime()
        pids = [f"fo-{i}" for i in range(s.failover)]

        async def place() -> None:
            it = iter(pids)

            async def worker() -> None:
                for pid in it:
                    await Bench.astart(pid, node="d", timeout=60)

            await asyncio.gather(*(worker() for _ in range(min(100, s.concurrency))))

        rt.run_sync(place())
        owned = rt.run_sync(Bench.acall(pids[0], {"op": "stats"}))["slots"]
        budget = self.ttl + 30

        async def answered_elsewhere(pid: str, timeout: float) -> bool:
            try:
                return await Bench.acall(pid, {"op": "where"}, timeout=timeout) != "d"
            except ProcessHubError:
                return False

        async def recover() -> tuple[float, float, list[float]]:
            # A sentinel is polled until one process answers from another node; only then is every
            # process called (100 at a time), so the callers do not flood the database while the
            # dead node's lease runs out. Each process's time is when its first answer came back.
            deadline = time.monotonic() + budget
            t_kill = time.perf_counter()
            victim.kill(signal.SIGKILL)
            while not await answered_elsewhere(pids[0], 0.5):
                if time.monotonic() > deadline:
                    raise BenchError(f"no process answered elsewhere within {budget:.0f}s")
            first = time.perf_counter() - t_kill
            pending = deque(pids[1:])
            done: list[float] = []

            async def worker() -> None:
                while pending:
                    pid = pending.popleft()
                    if await answered_elsewhere(pid, 2.0):
                        done.append(time.perf_counter() - t_kill)
                        continue
                    if time.monotonic() > deadline:
                        raise BenchError(f"{len(pending) + 1} processes still unreachable after {budget:.0f}s")
                    pending.append(pid)

            await asyncio.gather(*(worker() for _ in range(min(100, s.concurrency))))
            return max(done, default=first), first, done

        from django.db import connection

        with connection.cursor() as cur:
            cur.execute("SELECT now()")
            db_kill = cur.fetchone()[0]
        last, first, times = rt.run_sync(recover(), timeout=budget + 30)
        from django.db.models import Max

        from processhub.models import Process

        claimed = Process.objects.filter(process_id__startswith="fo-").exclude(node__name="d").aggregate(
            t=Max("started_at"))["t"]
        claimed_s = (claimed - db_kill).total_seconds() if claimed else float("nan")
        self.add(Row("failover", f"failover: SIGKILL a node owning {owned:,} processes, all answer elsewhere", last,
                     "s", "NODE_TTL", self.ttl, last / self.ttl, "<= NODE_TTL + 1 s", last <= self.ttl + 1.0,
                     note=f"first answer after {first:.2f} s, median {statistics.median(times or [first]):.2f} s; "
                          f"last row re-claimed {claimed_s:.2f} s after the kill (database clock)"))

    def phase_failover_scale(self) -> None:
        import psycopg

        from processhub.exceptions import ProcessHubError
        from processhub.models import Node, Process
        from processhub.runtime import get_runtime

        from .processes import Bench

        s = self.sizes
        n = s.failover_scale
        ri = float(s.settings.get("RECONCILE_INTERVAL", 1.0))
        self.say(f"phase 2: failover of a node owning {n:,} processes (rows inserted, activated by its reconcile)")
        victim = self.c.start_node("v")
        victim_id = self.c.wait_up("v")
        first = self.insert_owned(victim_id, 0, n, prefix="fs-")
        wait_for(lambda: self.slots_on("fs-0") >= n, 120, f"node v to activate {n:,} processes", interval=0.5)
        pt, nt = Process._meta.db_table, Node._meta.db_table
        reowned_sql = (f"SELECT count(*), max(p.epoch) FROM {pt} AS p JOIN {nt} AS n ON n.id = p.node_id "
                       f"WHERE p.id > %s AND p.status = 'running' AND p.epoch > 1 AND n.id <> %s "
                       f"AND n.status <> 'down' AND n.lease_expires_at > now()")
        budget = self.ttl + ri + 60
        with psycopg.connect(self.c.database_url, autocommit=True) as conn:
            db_kill = conn.execute("SELECT now()").fetchone()[0]
            t_kill = time.perf_counter()
            victim.kill(signal.SIGKILL)
            polls = 0
            while True:
                got, epoch = conn.execute(reowned_sql, (first, victim_id)).fetchone()
                polls += 1
                if got >= n:
                    break
                if time.perf_counter() - t_kill > budget:
                    raise BenchError(f"only {got:,} of {n:,} rows re-owned {budget:.0f} s after the kill")
                time.sleep(0.02)
            reowned = time.perf_counter() - t_kill
            claimed = conn.execute(f"SELECT max(started_at) FROM {pt} WHERE id > %s", (first,)).fetchone()[0]
            spread = dict(conn.execute(f"SELECT n.name, count(*) FROM {pt} AS p JOIN {nt} AS n ON n.id = p.node_id "
                                       f"WHERE p.id > %s GROUP BY n.name ORDER BY n.name", (first,)).fetchall())
        claimed_s = (claimed - db_kill).total_seconds()
        pids = [f"fs-{i}" for i in range(n)]

        async def answer_all() -> None:
            pending = deque(pids)
            deadline = time.monotonic() + budget

            async def worker() -> None:
                while pending:
                    pid = pending.popleft()
                    try:
                        if await Bench.acall(pid, {"op": "where"}, timeout=5.0) != "v":
                            continue
                    except ProcessHubError:
                        pass
                    if time.monotonic() > deadline:
                        raise BenchError(f"{len(pending) + 1} processes still unreachable after {budget:.0f}s")
                    pending.append(pid)

            await asyncio.gather(*(worker() for _ in range(min(200, n))))

        t_calls = time.perf_counter()
        get_runtime().run_sync(answer_all(), timeout=budget + 30)
        answered = time.perf_counter() - t_kill
        calls = time.perf_counter() - t_calls
        target = self.ttl + ri + 1.0
        self.add(Row("failover_scale", f"failover: SIGKILL a node owning {n:,} processes, all rows re-owned",
                     reowned, "s", "NODE_TTL", self.ttl, reowned / self.ttl, "<= NODE_TTL + RECONCILE_INTERVAL + 1 s",
                     reowned <= target,
                     note=f"target {target:.2f} s; database polled every 20 ms ({polls} polls): every row on a live "
                          f"node at epoch {epoch}; last claim {claimed_s:.2f} s after the kill (database clock); "
                          f"per node {spread}"))
        self.add(Row("failover_scale_answer", f"failover: the last of those {n:,} answers a call", answered, "s",
                     "NODE_TTL", self.ttl, answered / self.ttl,
                     note=f"calls begin once every row is re-owned: {n:,} acall()s, 200 in flight, took {calls:.2f} s"))

    def phase_reactivation(self) -> None:
        from collections import Counter

        from processhub.models import Process, ProcessStatus

        from .processes import Bench, Sleepy

        s = self.sizes
        n = s.reactivations
        self.say(f"phase 2: reactivation of {n:,} idle processes")
        pids = [f"nap-{i}" for i in range(n)]
        Bench.start("warm-0")
        result = Sleepy.start_many(pids, timeout=60)
        if result.errors:
            raise BenchError(f"start_many of the Sleepy processes failed: {list(result.errors.values())[:3]}")
        t_idle = time.monotonic()
        idle = Process.objects.filter(label=Sleepy.label, process_id__startswith="nap-", status=ProcessStatus.IDLE)
        wait_for(lambda: idle.count() >= n, 60, f"{n:,} Sleepy processes to passivate", interval=0.1)
        waited = time.monotonic() - t_idle
        self.sync_calls("warm-0", 50)
        revive, warm, where = [], [], Counter()
        for pid in pids:  # each revival next to a warm call, so both see the same machine
            t0 = time.perf_counter()
            where[Sleepy.call(pid, {"op": "where"}, timeout=10)] += 1
            revive.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            Bench.call("warm-0", 0)
            warm.append(time.perf_counter() - t0)
        r50, w50 = statistics.median(revive), statistics.median(warm)
        # Where the time goes: once they are idle again, the same revival in steps (what a call does inside).
        wait_for(lambda: idle.count() >= n, 60, f"{n:,} Sleepy processes to passivate again", interval=0.1)
        steps: dict[str, list[float]] = {"fetch()": [], "start()": [], "then call()": []}
        for pid in pids[: max(1, n // 3)]:
            t0 = time.perf_counter()
            if Sleepy.fetch(pid) is not None:
                raise BenchError(f"an idle process ({pid}) was found running")
            t1 = time.perf_counter()
            Sleepy.start(pid, timeout=10)
            t2 = time.perf_counter()
            Sleepy.call(pid, 0)
            t3 = time.perf_counter()
            for k, v in zip(steps, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                steps[k].append(v)
        self.add(Row("reactivation", f"reactivation: call() to an idle (passivated) process, p50 (n={n:,})", ms(r50),
                     "ms", "warm call() p50", ms(w50), r50 / w50, "p50 <= 3x", r50 / w50 <= 3.0,
                     note=f"p99 {ms(pct(revive, 0.99)):.3f} ms (warm p99 {ms(pct(warm, 0.99)):.3f} ms); idle_timeout "
                          f"{Sleepy.idle_timeout} s, all rows idle {waited:.1f} s after start_many; revived on "
                          f"{dict(sorted(where.items()))}; in steps (p50, n={len(steps['fetch()'])}): "
                          + ", ".join(f"{k} {ms(statistics.median(v)):.2f} ms" for k, v in steps.items())))

    # ============================================================ all

    def run(self, only: set[str] | None = None) -> None:
        s = self.sizes
        self.raw_in, self.raw_out = self.key("raw-in"), self.key("raw-out")
        self.c.worker("rawecho", "rawecho", self.raw_in, self.raw_out)
        self.raw_round_trips(50, self.raw_in, self.raw_out)  # warm up
        want = set(PHASES) if not only else only
        if "transports" in want:
            self.phase_transports()
        if "idle" in want:
            self.phase_idle_node()
        if "passivation" in want:
            self.phase_passivation()
        if want & set(THREE_NODES):
            for name in ("a", "b", "c"):
                self.c.start_node(name)
            for name in ("a", "b", "c"):
                self.c.wait_up(name)
        for name in THREE_NODES:
            if name in want:
                getattr(self, f"phase_{name}")()
        if "listing" in want:
            from . import listing

            listing.run(self)
        if "rolling" in want:
            from . import rolling

            rolling.run(self)
        if "fanout" in want:  # last: it starts a node, two web servers and two client processes of its own
            from . import fanout

            for row in fanout.run(fanout.FanoutSizes.quick() if self.quick else fanout.FanoutSizes(), self.c,
                                  self.say):
                self.add(row)
        self._redis.rpush(self.raw_in, b"stop")
        self.meta.update(sizes={k: v for k, v in asdict(s).items() if k != "settings"},
                         settings={**{"NODE_TTL": self.ttl}, **s.settings}, cpus=os.cpu_count(),
                         load=os.getloadavg())


# Phases on the three nodes a, b, c, in this order.
THREE_NODES = ["calls", "fetch", "casts", "activation", "start_many", "failover", "failover_scale", "reactivation"]
PHASES = ["transports", "idle", "passivation", *THREE_NODES, "listing", "rolling", "fanout"]
ORDER = ["call_p50", "call_p99", "acall_p50", "acall_p99", "acall_hub_p50", "envelope_cost", "cast_rate",
         "activation_rate", "start_many_rate", "failover", "failover_scale", "failover_scale_answer", "reactivation",
         "memory_per_process", "passivation_memory", "passivation_memory_malloc", "idle_cpu", "fetch_warm",
         "fetch_cold", "process_list_tag",
         "rolling_balance", "rolling_success", "idle_cpu_big", "reconcile_activation", "design_transport",
         "design_legacy_transport", "design_pubsub_layer", "design_core_layer", "design_pubsub_a2s",
         "design_core_a2s", "fanout_p50", "fanout_p99", "fanout_rate"]


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit in ("msg/s", "/s", "B"):
        return f"{v:,.0f} {unit}"
    if unit == "us":
        return f"{v:.1f} us"
    if unit == "MiB":
        return f"{v:.1f} MiB"
    if unit == "%":
        return f"{v:.2f}%"
    if unit == "processes":
        return f"{v:,.0f} processes"
    if unit == "ms":
        return f"{v:.3f} ms"
    if unit == "% core":
        return f"{v:.2f}%"
    return f"{v:.2f} {unit}"


def table(rows: list[Row]) -> str:
    head = ["figure", "value", "yardstick (same run)", "ratio", "target", "result"]
    body = []
    for r in rows:
        yard = "-" if r.yard_value is None else f"{r.yardstick}: {fmt(r.yard_value, r.yard_unit or r.unit)}"
        if r.yardstick == "NODE_TTL" and r.yard_value is not None:
            yard = f"NODE_TTL: {r.yard_value:.1f} s"
        ratio = "-" if r.ratio is None else (f"{r.ratio * 100:.1f}%" if r.ratio_unit == "%" else f"{r.ratio:.2f}x")
        result = "info" if r.ok is None else ("pass" if r.ok else "MISS")
        body.append([r.figure, fmt(r.value, r.unit), yard, ratio, r.target, result])
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    notes = [f"- {r.figure}: {r.note}" for r in rows if r.note]
    return "\n".join(out + ["", *notes])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes and fast timings (smoke run, ~30 s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--set", action="append", default=[], metavar="SIZE=VALUE",
                   help="override one size, e.g. --set memory_processes=20000 (see Sizes in benchmarks/run.py)")
    p.add_argument("--only", default="", help=f"comma-separated phases to run: {','.join(PHASES)}")
    p.add_argument("--log-dir", type=Path, default=None, help="where node logs go (default: a temp dir)")
    ns = p.parse_args(argv)
    sizes = Sizes.quick() if ns.quick else Sizes()
    for item in ns.set:
        name, _, value = item.partition("=")
        if name not in Sizes.__dataclass_fields__ or name == "settings":
            p.error(f"unknown size {name!r}")
        setattr(sizes, name, type(getattr(sizes, name))(float(value)))
    log_dir = ns.log_dir or Path(tempfile.gettempdir()) / f"processhub-bench-{uuid.uuid4().hex[:6]}"

    def progress(msg: str) -> None:
        print(f"benchmarks: {msg}", file=sys.stderr, flush=True)

    only = {x.strip() for x in ns.only.split(",") if x.strip()}
    if only - set(PHASES):
        p.error(f"unknown phase(s) {sorted(only - set(PHASES))}")
    bench = Benchmark(sizes, log_dir, progress, quick=ns.quick)
    started = time.monotonic()
    try:
        bench.setup()
        bench.run(only)
    except BenchError as exc:
        print(f"benchmarks: {exc}\nnode logs in {log_dir}", file=sys.stderr)
        return 1
    finally:
        bench.cleanup()
    rows = [bench.rows[k] for k in ORDER if k in bench.rows]
    bench.meta["seconds"] = round(time.monotonic() - started, 1)
    if ns.json:
        print(json.dumps({"rows": [asdict(r) for r in rows], "meta": bench.meta}, indent=2))
    else:
        print(table(rows))
        raw = bench.meta.get("raw_round_trip_p50_ms") or bench.meta.get("raw_round_trip_p50_ms_phase0", 0.0)
        print(f"\n{'quick' if ns.quick else 'full'} run, {bench.meta['seconds']} s, load {os.getloadavg()[0]:.2f} "
              f"on {os.cpu_count()} cores; raw Redis round trip p50 {raw:.3f} ms")
    return 0
