"""Rolling restart under load (issue 11): nodes with ``REBALANCE = "active"`` restarted one by one.

Every node of the earlier phases is retired first, so only the rolling nodes
place processes. Then: ``rolling_nodes`` nodes, ``rolling_processes`` processes
started with ``start_many``, and a steady ``call()`` load from a client process of
its own (``workers.py caller``: random ids, ``rolling_rate`` calls/s). Each node in
turn gets SIGTERM (it drains: every process is handed to the others), is started
again under the same name once it has exited, and the next one follows as soon as
it is registered. ``rolling_settle`` seconds after the last node is back, the
processes per node are compared with the mean; calls are counted outside the
SIGTERM windows (from the signal until the old node process exited), as issue 11
asks, and over the whole run.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .run import Benchmark

ACTIVE = {"REBALANCE": "active"}
CALLER_THREADS = 4


def per_node(names: list[str]) -> dict[str, int]:
    """Running rows of the rolling processes per node name (only incarnations with a valid lease)."""
    from django.db.models import Count
    from django.db.models.functions import Now

    from processhub.models import NodeStatus, Process, ProcessStatus

    got = dict(Process.objects.filter(process_id__startswith="roll-", status=ProcessStatus.RUNNING,
                                      node__lease_expires_at__gt=Now()).exclude(node__status=NodeStatus.DOWN)
               .values_list("node__name").annotate(n=Count("id")).order_by())
    return {name: got.get(name, 0) for name in names}


def deviation(counts: dict[str, int]) -> float:
    """The worst node's distance from the mean, as a fraction of the mean."""
    mean = sum(counts.values()) / len(counts)
    return max(abs(v - mean) for v in counts.values()) / mean if mean else 1.0


def run(bench: Benchmark) -> None:
    from .cluster import BenchError
    from .processes import Bench
    from .run import Row

    s, c = bench.sizes, bench.c
    names = [f"r{i}" for i in range(1, s.rolling_nodes + 1)]
    n = s.rolling_processes
    bench.say(f"phase 4: rolling restart of {len(names)} nodes holding {n:,} processes under {s.rolling_rate:.0f} "
              f"calls/s")
    bench.retire(*list(c.nodes))
    for name in names:
        c.start_node(name, settings=ACTIVE)
    for name in names:
        c.wait_up(name)
    result = Bench.start_many([f"roll-{i}" for i in range(n)], timeout=120)
    if result.errors:
        raise BenchError(f"start_many of the rolling processes failed: {list(result.errors.values())[:3]}")
    before = per_node(names)
    load = c.worker("caller", "caller", "roll-", str(n), str(s.rolling_rate), str(CALLER_THREADS), stdin=True,
                    max_seconds=1800)
    load.popen.stdin.write("go\n")
    load.popen.stdin.flush()
    time.sleep(2.0)
    windows: list[tuple[float, float]] = []
    drains, boots = [], []
    for name in names:
        old = c.nodes[name]
        t0 = time.monotonic()
        old.kill(signal.SIGTERM)
        try:
            old.popen.wait(120)
        except subprocess.TimeoutExpired:
            raise BenchError(f"node {name} did not exit within 120 s of SIGTERM") from None
        t1 = time.monotonic()
        windows.append((t0, t1))
        drains.append(t1 - t0)
        c.start_node(name, settings=ACTIVE)
        c.wait_up(name)
        boots.append(time.monotonic() - t1)
    back = time.monotonic()
    history = []  # (seconds after the last node came back, worst deviation)
    while (waited := time.monotonic() - back) < s.rolling_settle:
        history.append((waited, deviation(per_node(names))))
        time.sleep(1.0)
    counts = per_node(names)
    worst = deviation(counts)
    load.popen.stdin.write("stop\n")
    load.popen.stdin.flush()
    records = json.loads(load.popen.stdout.readline())
    load.popen.wait(30)

    def in_window(t0: float, t1: float) -> bool:
        return any(t0 < w1 and t1 > w0 for w0, w1 in windows)

    outside = [r for r in records if not in_window(r[0], r[1])]
    ok_out = sum(1 for r in outside if r[2] is None)
    ok_all = sum(1 for r in records if r[2] is None)
    errors_out = dict(Counter(r[2] for r in outside if r[2] is not None))
    errors_in = dict(Counter(r[2] for r in records if r[2] is not None and in_window(r[0], r[1])))
    settled = next((round(t, 1) for t, d in history if d <= 0.15), None)
    mean = sum(counts.values()) / len(counts)
    what = f"rolling restart ({len(names)} nodes, {n:,} processes)"
    bench.add(Row("rolling_balance", f"{what}: worst node vs mean {s.rolling_settle:.0f} s after", 100 * worst, "%",
                  "mean per node", mean, target="<= 15%", ok=worst <= 0.15, yard_unit="processes",
                  note=f"per node {counts} (before the restarts {before}); within 15% "
                       + (f"{settled} s after the last node was back" if settled is not None else "never in the window")
                       + f"; drains {', '.join(f'{d:.1f}' for d in drains)} s, restarts until registered "
                       f"{', '.join(f'{b:.1f}' for b in boots)} s; REBALANCE_RATE "
                       f"{s.settings.get('REBALANCE_RATE', 100.0):.0f}/s"))
    rate_out = 100.0 * ok_out / len(outside) if outside else 0.0
    bench.add(Row("rolling_success", f"{what}: calls OK outside SIGTERM windows", rate_out, "%",
                  target=">= 99.9%", ok=rate_out >= 99.9,
                  note=f"{ok_out:,} of {len(outside):,} outside, failures {errors_out or 'none'}; over the whole run "
                       f"{ok_all:,} of {len(records):,} ({100.0 * ok_all / max(1, len(records)):.2f}%), failures "
                       f"inside the windows {errors_in or 'none'}; {CALLER_THREADS} threads, "
                       f"{s.rolling_rate:.0f} calls/s aimed"))
    bench.retire(*names)
