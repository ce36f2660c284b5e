"""Admin actions on a real cluster: the helpers called directly, then the same through the admin pages."""
import signal

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.urls import reverse

from hubproject.demo.processes import Counter
from processhub import admin_actions
from processhub.exceptions import ProcessCrashed
from processhub.models import Node, NodeStatus, Process, ProcessStatus
from tests.cluster.harness import wait_for
from tests.conftest import needs_services
from tests.hubtest.processes import Crashy, Echo

pytestmark = [needs_services, pytest.mark.cluster]


def row(cls, pid) -> Process:
    return Process.objects.select_related("node").get(label=cls.label, process_id=pid)


def test_stop_restart_and_move_helpers(cluster3):
    for i in range(4):
        Echo.start(f"e{i}")
    # stop: the row is stopped, the activation is gone, a second stop has nothing to do.
    [out] = admin_actions.stop_processes([row(Echo, "e0")])
    assert out.status == admin_actions.DONE, out
    assert row(Echo, "e0").status == ProcessStatus.STOPPED and Echo.fetch("e0") is None
    [again] = admin_actions.stop_processes([row(Echo, "e0")])
    assert again.status == admin_actions.SKIPPED

    # restart of a running process: a fresh activation (init ran again) under a larger epoch.
    Echo.call("e1", {"op": "x"})
    before = row(Echo, "e1").epoch
    [out] = admin_actions.restart_processes([row(Echo, "e1")])
    assert out.ok, out
    reply = Echo.call("e1", {})
    assert reply["epoch"] > before and reply["n"] == 1
    # restart of the stopped one and of a failed one: running again, counters cleared.
    for _ in range(3):
        with pytest.raises(ProcessCrashed):
            Crashy.call("c", {"op": "crash"})
    assert row(Crashy, "c").status == ProcessStatus.FAILED
    outs = admin_actions.restart_processes([row(Echo, "e0"), row(Crashy, "c")])
    assert [o.status for o in outs] == [admin_actions.DONE, admin_actions.DONE], outs
    crashy = row(Crashy, "c")
    assert (crashy.status, crashy.restarts, crashy.last_error) == (ProcessStatus.RUNNING, 0, "")
    assert Crashy.call("c", {})["epoch"] == crashy.epoch

    # move: guided placement onto a chosen live node, epoch + 1, state handed off.
    Counter.call("moving", {"op": "incr", "by": 5})
    r = row(Counter, "moving")
    target = next(n for n in cluster3.live_names() if n != r.node.name)
    [out] = admin_actions.move_processes([r], target)
    assert out.ok, out
    moved = row(Counter, "moving")
    assert (moved.node.name, moved.epoch) == (target, r.epoch + 1)
    assert wait_for(lambda: Counter.call("moving", {"op": "get"}), 10, "the moved counter")["count"] == 5
    [same] = admin_actions.move_processes([moved], target)
    assert same.status == admin_actions.SKIPPED and "already on" in same.message
    [nowhere] = admin_actions.move_processes([moved], "no-such-node")
    assert nowhere.status == admin_actions.FAILED and "NoLiveNodes" in nowhere.message
    admin_actions.stop_processes([row(Echo, "e3")])
    [stopped] = admin_actions.move_processes([row(Echo, "e3")], target)
    assert stopped.status == admin_actions.SKIPPED and "stopped" in stopped.message


def test_drain_in_place_moves_everything_and_takes_no_new_work(cluster3):
    for i in range(30):
        Counter.call(f"d{i}", {"op": "incr", "by": i})
    victim = Node.objects.filter(name="c", status=NodeStatus.UP).get()
    on_victim = list(Process.objects.filter(node=victim).values_list("process_id", flat=True))
    assert on_victim, "rendezvous put nothing on c; pick more ids"
    [out] = admin_actions.drain_nodes([victim])
    assert out.ok and f"moving {len(on_victim)} processes" in out.message, out
    wait_for(lambda: not Process.objects.filter(node=victim, status=ProcessStatus.RUNNING).exists(), 20,
             "c to hand every process away")
    victim.refresh_from_db()
    assert victim.status == NodeStatus.DRAINING and cluster3.nodes["c"].alive()
    lease = victim.lease_expires_at
    wait_for(lambda: Node.objects.get(pk=victim.pk).lease_expires_at > lease, 10, "c to keep heartbeating")
    # The moved counters kept their state (handoff) and run on a and b now.
    for pid in on_victim:
        i = int(pid[1:])
        reply = wait_for(lambda pid=pid: Counter.call(pid, {"op": "get"}), 10, f"{pid} after the drain")
        assert reply["count"] == i and reply["node"] in ("a", "b")
    # No new process lands on the drained node.
    for i in range(30):
        assert Echo.start(f"new{i}").node != "c"
    assert not Process.objects.filter(node=victim).exists()
    # Draining again is harmless; draining every node is refused for the last one.
    [a_out] = admin_actions.drain_nodes([Node.objects.get(name="a", status=NodeStatus.UP)])
    assert a_out.ok, a_out
    [b_out] = admin_actions.drain_nodes([Node.objects.get(name="b", status=NodeStatus.UP)])
    assert b_out.status == admin_actions.FAILED and "no other live node" in b_out.message, b_out
    [c_out] = admin_actions.drain_nodes([Node.objects.get(pk=victim.pk)])
    assert c_out.status == admin_actions.SKIPPED
    # A drained node still stops cleanly on SIGTERM.
    cluster3.kill("c", signal.SIGTERM)
    assert cluster3.wait_exit("c", 20) == 0
    assert Node.objects.get(pk=victim.pk).status == NodeStatus.DOWN


def test_actions_through_the_admin_are_logged(cluster3, admin_client, admin_user):
    changelist = reverse("admin:processhub_process_changelist")
    for i in range(3):
        Echo.start(f"adm{i}")
    r0, r1 = row(Echo, "adm0"), row(Echo, "adm1")
    response = admin_client.post(changelist, {"action": "stop", "_selected_action": [r0.pk], "index": 0},
                                 follow=True)
    assert "Stop: 1 done" in response.content.decode()  # the admin capitalizes messages
    assert row(Echo, "adm0").status == ProcessStatus.STOPPED
    target = next(n for n in Node.objects.filter(status=NodeStatus.UP) if n.pk != r1.node_id)
    response = admin_client.post(changelist, {"action": "move", "_selected_action": [r1.pk], "index": 0,
                                              "to_node": target.pk}, follow=True)
    assert "Move: 1 done" in response.content.decode()
    assert row(Echo, "adm1").node_id == target.pk
    response = admin_client.post(changelist, {"action": "restart", "_selected_action": [r0.pk], "index": 0},
                                 follow=True)
    assert "Restart: 1 done" in response.content.decode() and row(Echo, "adm0").status == ProcessStatus.RUNNING
    logged = list(LogEntry.objects.filter(user=admin_user, action_flag=CHANGE).order_by("pk")
                  .values_list("object_id", "change_message"))
    assert [m.split(":")[0] for _, m in logged] == ["stop", "move", "restart"]
    assert logged[0][0] == str(r0.pk) and target.name in logged[1][1]
    nodes = reverse("admin:processhub_node_changelist")
    c = Node.objects.get(name="c", status=NodeStatus.UP)
    response = admin_client.post(nodes, {"action": "drain", "_selected_action": [c.pk], "index": 0}, follow=True)
    assert "Drain: 1 done" in response.content.decode()
    assert LogEntry.objects.filter(object_id=c.pk, change_message__startswith="drain").exists()
    wait_for(lambda: Node.objects.get(pk=c.pk).status == NodeStatus.DRAINING, 5, "c draining")
