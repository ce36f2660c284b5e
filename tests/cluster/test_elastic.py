"""An elastic cluster on real nodes: active rebalancing on join and undrain, a one-shot rebalance with a dry run,
idle passivation with its state kept through revival, and a node that dies while its processes are idle."""
from __future__ import annotations

import subprocess
import sys

import pytest

from processhub import hub
from processhub.models import Process, ProcessStatus
from processhub.placement import choose
from tests.cluster.harness import ROOT, wait_for
from tests.conftest import needs_services
from tests.edgeapp.processes import Idler, StartCounter
from tests.hubtest.processes import Echo

pytestmark = [needs_services, pytest.mark.cluster]

ACTIVE = {"REBALANCE": "active", "REBALANCE_RATE": 200.0}


def where(label: str = Echo.label) -> dict[str, str]:
    return dict(Process.objects.filter(label=label, status=ProcessStatus.RUNNING).values_list("process_id",
                                                                                              "node__name"))


def winners(pids, names, label: str = Echo.label) -> dict[str, str]:
    return {p: choose(f"{label}:{p}", names) for p in pids}


def test_active_rebalancing_fills_a_node_that_joins_and_one_that_is_undrained(cluster_factory):
    c = cluster_factory(settings=ACTIVE)
    c.start_node("a")
    c.start_node("b")
    key = f"starts:{c.prefix}"
    args = [{"id": f"s{i}", "key": key} for i in range(60)]
    for arg in args:
        StartCounter.start(arg)
    pids = [a["id"] for a in args]
    c.start_node("c")
    target = winners(pids, ["a", "b", "c"], StartCounter.label)
    assert "c" in target.values()
    wait_for(lambda: where(StartCounter.label) == target, 20, "the processes placed on c to move there")
    # With handoff state (even ids carry a token), and each started once more only where it moved.
    for arg in args[:20]:
        reply = StartCounter.call(arg, {})
        i = int(arg["id"][1:])
        assert reply["node"] == target[arg["id"]]
        if target[arg["id"]] == "c":
            assert reply["token"] == (f"t-s{i}" if i % 2 == 0 else None)
    # Drained, its processes leave; undrained, they come back.
    hub.drain("c")
    wait_for(lambda: "c" not in where(StartCounter.label).values(), 20, "c to drain")
    hub.undrain("c")
    wait_for(lambda: where(StartCounter.label) == target, 20, "c to fill up again")


def test_passive_cluster_rebalances_once_when_asked_with_a_dry_run_first(cluster_factory):
    c = cluster_factory()
    c.start_node("a")
    c.start_node("b")
    pids = [f"r{i}" for i in range(40)]
    for pid in pids:
        Echo.start(pid)
    before = where()
    c.start_node("c")
    target = winners(pids, ["a", "b", "c"])
    moving = sorted(p for p in pids if target[p] == "c")
    assert moving
    env = dict(c.env(), PROCESSHUB_EMBEDDED="false")
    dry = subprocess.run([sys.executable, str(ROOT / "manage.py"), "hubrebalance", "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert f"{len(moving)} processes would move." in dry.stdout
    assert sorted(line.split()[1].rstrip(":") for line in dry.stdout.splitlines() if "->" in line) == moving
    assert where() == before  # a dry run moves nothing, and a passive cluster did not either
    done = subprocess.run([sys.executable, str(ROOT / "manage.py"), "hubrebalance", "--wait", "30"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert "Rebalanced." in done.stdout, done.stdout
    assert where() == target and hub.rebalance_plan() == []


def test_passivation_and_revival_with_state_and_a_node_that_dies_while_idle(cluster_factory):
    c = cluster_factory()
    c.start_node("a")
    c.start_node("b")
    pids = [f"i{i}" for i in range(12)]
    first = {p: Idler.call(p, {}) for p in pids}
    wait_for(lambda: Process.objects.filter(label=Idler.label, status=ProcessStatus.IDLE).count() == 12, 15,
             "every process to passivate")
    assert len(list(hub.process_list(label=Idler.label, status="idle"))) == 12
    assert all(Idler.fetch(p) is None for p in pids)
    # A node dies while its processes are idle: nothing is lost and nothing starts for them.
    c.kill("a")
    c.wait_exit("a")
    wait_for(lambda: not hub.is_alive("a"), 10, "a's lease to end")
    assert Process.objects.filter(label=Idler.label, status=ProcessStatus.IDLE).count() == 12
    # The next message revives each, on a live node, with a larger epoch and the state it handed off.
    for p in pids:
        reply = Idler.call(p, {})
        assert reply["node"] == "b" and reply["epoch"] > first[p]["epoch"]
        assert (reply["count"], reply["restored"], reply["arg"]) == (2, True, p)
