"""A rolling restart under load with active rebalancing, judged by the strict detector (CI-sized).

Every node in turn is stopped with SIGTERM (it drains: its processes move with
handoff) and started again under the same name. With ``REBALANCE = "active"``
the last node restarted fills up again on its own. Promises: every node holds
within 15 % of the mean 30 s after the last one is back, no overlapping or late
activation, nothing lost, and at least 99.9 % of calls outside the SIGTERM
windows succeed. ``--chaos-scale`` multiplies the processes (the benchmark's
rolling-restart row runs the 5-node, 5,000-process version).
"""
from __future__ import annotations

import statistics
import time

import pytest

from processhub.models import Node, NodeStatus, Process, ProcessStatus
from tests.chaos.load import CallLoad, start_many
from tests.cluster.harness import wait_for
from tests.conftest import needs_services
from tests.hubtest.processes import ChaosRecorder

pytestmark = [needs_services, pytest.mark.cluster, pytest.mark.chaos, pytest.mark.slow]

NAMES = ["a", "b", "c", "d"]


def per_node() -> dict[str, int]:
    live = dict(Node.objects.filter(status=NodeStatus.UP).values_list("id", "name"))
    counts = {name: 0 for name in live.values()}
    for node_id in Process.objects.filter(label=ChaosRecorder.label, status=ProcessStatus.RUNNING).values_list(
            "node_id", flat=True):
        if node_id in live:
            counts[live[node_id]] += 1
    return counts


def balanced(counts: dict[str, int], names: list[str], within: float) -> bool:
    if set(counts) != set(names):
        return False
    mean = statistics.mean(counts.values())
    return all(abs(n - mean) <= within * mean for n in counts.values())


def test_rolling_restart_with_active_rebalancing(chaos_factory, recording, chaos_scale):
    c = chaos_factory(settings={"REBALANCE": "active", "REBALANCE_RATE": 400.0})
    c.start_nodes(NAMES)
    pids = [f"roll{i}" for i in range(int(800 * chaos_scale))]
    args = [recording.arg(p, tick=1.0) for p in pids]
    start_many(ChaosRecorder, args, concurrency=100)
    wait_for(lambda: balanced(per_node(), NAMES, 0.15), 30, "a balanced start")
    load = CallLoad([(ChaosRecorder, a) for a in args], rate=60, workers=16, timeout=5).start()
    windows = []
    try:
        for name in NAMES:
            began = time.time()
            assert c.terminate(name, 60) == 0  # drains: every process moves with handoff, then it exits
            windows.append((began, time.time() + 1.0))  # calls already sent to the draining node may time out
            c.start_node(name)
        back = time.monotonic()
        wait_for(lambda: balanced(per_node(), NAMES, 0.15), 30, "every node within 15 % of the mean")
        print(f"balanced {time.monotonic() - back:.1f}s after the last node came back: {per_node()}")
        settle = time.time()
        recording.wait_alive(pids, settle, 30)
        # Enough calls outside the windows to judge a 99.9 % rate by.
        wait_for(lambda: load.stats.counted(windows) >= 300, 30, "300 calls outside the SIGTERM windows")
    finally:
        stats = load.stop()
    rate = stats.success_rate(windows)
    print(f"calls: {stats.calls}, errors {dict(stats.errors())}, success outside the SIGTERM windows {rate:.3%} "
          f"of {stats.counted(windows)}")
    verdict = recording.judge(pids, settle)
    print(verdict.summary())
    assert verdict.ok, verdict.summary()
    assert not [e for e in stats.errors() if e.startswith("UNNAMED")], stats.errors()
    assert stats.counted(windows) >= 300 and rate >= 0.999
