"""The registry API on a real 3-node cluster: tags through failover and moves, start_many with rollback
(an invalid argument, a node killed mid-call), declared singletons, operations, health, process groups."""
from __future__ import annotations

import signal
import threading
import time

import pytest

from processhub import hub, signals
from processhub.exceptions import CallTimeout, ProcessNotRunning, StartManyFailed
from processhub.models import Node, NodeStatus, Process, ProcessStatus
from tests.cluster.harness import wait_for
from tests.conftest import needs_services
from tests.edgeapp.processes import Member, Scheduler
from tests.hubtest.processes import Echo, SlowInit

pytestmark = [needs_services, pytest.mark.cluster]


def running(label: str, prefix: str = "") -> int:
    return Process.objects.filter(label=label, status=ProcessStatus.RUNNING, process_id__startswith=prefix).count()


def test_tags_metadata_queries_and_health_across_nodes(cluster3):
    refs = [Echo.start(f"t{i}", tags=["org:7"] if i % 3 else ["org:8"], metadata={"i": i}) for i in range(30)]
    by_node = {n: sorted(r.process_id for r in refs if r.node == n) for n in ("a", "b", "c")}
    assert all(by_node.values()), by_node  # rendezvous spread them
    assert sorted(r.process_id for r in hub.process_list(node="b", label=Echo.label)) == by_node["b"]
    assert len(list(hub.match_tag("org:7"))) == 20
    states = {s.name: s for s in hub.nodes()}
    assert set(states) == {"a", "b", "c"} and all(s.lease_valid and s.status == "up" for s in states.values())
    assert sum(s.processes for s in states.values()) >= 30
    assert hub.is_alive("a") and not hub.is_partitioned("a")
    # Failover keeps tags and metadata; queries no longer count the dead node's processes as running.
    victim = "b"
    cluster3.kill(victim)
    wait_for(lambda: not hub.is_alive(victim), 10, "b's lease to end")
    assert hub.is_partitioned(victim) or Node.objects.get(name=victim, pid=cluster3.nodes[victim].pid).status == "down"
    wait_for(lambda: sorted(r.process_id for r in hub.process_list(label=Echo.label)) == sorted(f"t{i}" for i in
                                                                                               range(30)),
             15, "every process running again")
    moved = {r.process_id: r for r in hub.process_list(label=Echo.label)}
    assert all(moved[p].node in ("a", "c") and moved[p].metadata == {"i": int(p[1:])} for p in by_node["b"])
    assert len(list(hub.match_tag("org:7"))) == 20
    # A move keeps them too.
    pid = by_node["a"][0]
    assert Echo.move(pid, "c")
    wait_for(lambda: Echo.fetch(pid) and Echo.fetch(pid).node == "c", 10, "the move")
    assert Echo.fetch(pid).tags == tuple(refs[int(pid[1:])].tags)


def test_start_many_across_three_nodes_and_rollback_of_an_invalid_argument(cluster3):
    result = Echo.start_many([f"sm{i}" for i in range(1000)], timeout=60, tags=["bulk"])
    assert len(result.refs) == 1000 and not result.errors
    assert {r.node for r in result.refs.values()} == {"a", "b", "c"}
    assert running(Echo.label, "sm") == 1000 and len(list(hub.match_tag("bulk"))) == 1000
    args = [f"rb{i}" for i in range(999)] + [""]  # one empty id: invalid
    with pytest.raises(StartManyFailed) as info:
        Echo.start_many(args, on_failure="rollback", timeout=60)
    assert list(info.value.errors) == ["#999"] or list(info.value.errors) == [""]
    assert running(Echo.label, "rb") == 0
    assert sorted(Echo.stop_many([f"sm{i}" for i in range(10)])) == sorted(f"sm{i}" for i in range(10))


def test_start_many_rollback_when_a_target_node_is_killed_mid_call(cluster3):
    args = [{"id": f"k{i}", "s": 1.5} for i in range(300)]  # inits take 1.5 s: the call is in flight
    outcome: dict = {}

    def go():
        try:
            SlowInit.start_many(args, on_failure="rollback", timeout=4)
        except Exception as exc:  # noqa: BLE001 - judged below
            outcome["error"] = exc

    caller = threading.Thread(target=go)
    caller.start()
    wait_for(lambda: running(SlowInit.label, "k") > 0, 10, "the rows to be inserted")
    cluster3.kill("b")
    caller.join(60)
    assert isinstance(outcome.get("error"), StartManyFailed), outcome
    assert all(isinstance(e, CallTimeout) for e in outcome["error"].errors.values())
    # Nothing this call created is left: not on the live nodes, not among the dead node's rows.
    wait_for(lambda: running(SlowInit.label, "k") == 0, 20, "every row of the call stopped")


def test_declared_singleton_runs_once_in_the_cluster_and_survives_its_node(cluster_factory):
    c = cluster_factory(env={"HUBTEST_AUTOSTART": "1"})
    for name in ("a", "b", "c"):
        c.start_node(name, wait=False)
    for name in ("a", "b", "c"):
        c.wait_up(name)
    wait_for(lambda: running(Scheduler.label) == 1, 15, "the declared scheduler")
    first = Scheduler.call("cron", {}, start=False)
    assert Process.objects.filter(label=Scheduler.label).count() == 1
    c.kill(first["node"])
    wait_for(lambda: Scheduler.call("cron", {}, start=False, timeout=1)["node"] != first["node"], 15,
             "the scheduler on another node")
    Scheduler.stop("cron")  # stopped by hand: still declared, so it comes back
    wait_for(lambda: running(Scheduler.label) == 1, 15, "the scheduler back after a stop")


def test_operations_and_start_false_on_a_cluster(cluster3):
    with pytest.raises(ProcessNotRunning):
        Echo.call("op-none", {}, start=False)
    ref = Echo.start("op", node="a")
    assert Process.objects.get(label=Echo.label, process_id="op").guided
    again = Echo.restart("op")
    assert again.epoch > ref.epoch
    assert hub.drain("c") >= 0
    wait_for(lambda: Node.objects.filter(name="c", status=NodeStatus.DRAINING).exists(), 5, "c drained")
    hub.undrain("c")
    wait_for(lambda: Node.objects.filter(name="c", status=NodeStatus.UP).exists(), 5, "c undrained")


def test_registered_signal_reaches_a_client(cluster3):
    seen = []
    signals.process_registered.connect(lambda sender, process_id, node, **kw: seen.append((process_id, node)),
                                       weak=False, dispatch_uid="test-registered")
    try:
        ref = Echo.start("reg-me")
        wait_for(lambda: ("reg-me", ref.node) in seen, 5, "process_registered in the test process")
    finally:
        signals.process_registered.disconnect(dispatch_uid="test-registered")


def test_groups_members_publish_and_multi_call_with_a_paused_node(cluster3):
    for i in range(12):
        Member.start({"id": f"g{i}", "groups": ["lobby"] + (["odd"] if i % 2 else [])})
    members = {r.process_id: r.node for r in hub.members("lobby")}
    assert len(members) == 12 and set(members.values()) == {"a", "b", "c"}
    assert len(list(hub.members("odd"))) == 6
    assert hub.publish("lobby", {"hello": 1}) == 12
    wait_for(lambda: all(Member.call({"id": p}, {})["got"] == [{"hello": 1}] for p in members), 5, "every cast")
    Member.call({"id": "g1"}, {"op": "leave", "group": "odd"})
    assert len(list(hub.members("odd"))) == 5
    # One node paused: the others answer, its members time out, and the call ends within its timeout.
    cluster3.kill("c", signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        replies = hub.multi_call("lobby", {}, timeout=1.5)
        took = time.monotonic() - t0
        # Membership is stored with the row: once the paused node's processes moved, they are still members.
        # (Still paused: a pause shorter than its lease would leave them where they are.)
        wait_for(lambda: len([r for r in hub.members("lobby") if r.node != "c"]) == 12, 20, "c's members moved")
    finally:
        cluster3.kill("c", signal.SIGCONT)
    assert took < 1.5 + 1.0
    for pid, node in members.items():
        if node == "c":
            assert isinstance(replies[pid], CallTimeout), (pid, replies[pid])
        else:
            assert replies[pid]["id"] == pid, (pid, replies[pid])
    assert len(list(hub.members("odd"))) == 5
