"""Node death, pauses, drains and Redis loss on a real cluster (issue 2, behaviours 3-5 and 8)."""
import json
import signal
import socket
import subprocess
import time

import pytest
import redis

from hubproject.demo.processes import Counter
from processhub.conf import envelope_keys, hub_settings
from processhub.exceptions import ProcessHubError
from processhub.models import Node, NodeStatus, Process, ProcessStatus
from processhub.runtime import get_runtime
from processhub.transport.envelope import Opener
from tests.cluster.harness import FAST, wait_for
from tests.conftest import REDIS_URL, needs_services
from tests.hubtest.processes import Echo, Temporary, Transient

pytestmark = [needs_services, pytest.mark.cluster]

BUDGET = FAST["NODE_TTL"] + FAST["RECONCILE_INTERVAL"]
# Scheduling noise on a shared 2-core machine: three Django processes plus the test.
SLACK = 2.0


def rows_on(name):
    return list(Process.objects.filter(node__name=name, status=ProcessStatus.RUNNING).values_list(
        "label", "process_id", "epoch"))


def spread(n=12):
    for i in range(n):
        Echo.start(f"perm{i}")
        Transient.start(f"tran{i}")
        Temporary.start(f"temp{i}")


def test_sigkill_moves_permanent_and_transient_and_drops_temporary(cluster3):
    spread()
    victim = Echo.fetch("perm0").node
    before = {(lbl, pid): ep for lbl, pid, ep in rows_on(victim)}
    assert before
    killed_at = time.monotonic()
    cluster3.kill(victim, signal.SIGKILL)

    def moved():
        rows = Process.objects.filter(status=ProcessStatus.RUNNING, node__name=victim)
        return not rows.exists()

    wait_for(moved, BUDGET + SLACK, "the dead node's rows to move")
    failover = time.monotonic() - killed_at
    for (label, pid), epoch in before.items():
        row = Process.objects.select_related("node").get(label=label, process_id=pid)
        if label == Temporary.label:
            assert row.status == ProcessStatus.STOPPED and row.node is None
            continue
        assert row.status == ProcessStatus.RUNNING and row.node.name != victim and row.epoch > epoch
        cls = Echo if label == Echo.label else Transient
        reply = cls.call(pid, {})
        assert reply["node"] != victim and reply["epoch"] == row.epoch
    print(f"failover after SIGKILL: {failover:.2f}s (budget {BUDGET}s + slack)")


def test_sigstop_longer_than_ttl_never_serves_old_epochs(cluster3):
    spread(9)
    victim = Echo.fetch("perm1").node
    node_row = Node.objects.get(name=victim, status=NodeStatus.UP)
    old = {(lbl, pid): ep for lbl, pid, ep in rows_on(victim)}
    r = redis.Redis.from_url(REDIS_URL)
    pubsub = r.pubsub()
    reply_channel = f"{cluster3.prefix}.reply.paused"
    pubsub.subscribe(reply_channel)
    pubsub.get_message(timeout=1)
    cluster3.kill(victim, signal.SIGSTOP)
    try:
        # A call that reaches the paused node's buffer: it must not be handled on wake-up.
        env = {"t": "call", "l": Echo.label, "p": "perm1", "m": {"from": "buffer"}, "r": reply_channel, "id": "z"}
        rt = get_runtime()
        assert rt.run_sync(rt.transport.publish(node_row.channel, json.dumps(env).encode())) == 1
        wait_for(lambda: not rows_on(victim), BUDGET + SLACK, "takeover of the paused node's processes")
        for (label, pid), epoch in old.items():
            if label != Temporary.label:
                cls = Echo if label == Echo.label else Transient
                reply = cls.call(pid, {"x": 1})
                assert reply["node"] != victim and reply["epoch"] > epoch
        served_before = Echo.call("perm1", {})["n"]
    finally:
        cluster3.kill(victim, signal.SIGCONT)
    answer = None
    deadline = time.monotonic() + 5
    while answer is None and time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.2)
        if msg and msg["type"] == "message":
            opener = Opener(envelope_keys(hub_settings()), 30)  # the reply is sealed, like every message of the hub
            answer = json.loads(opener.open(reply_channel.encode(), msg["data"], time.time()))
    assert answer is not None and answer["ok"] is False and answer["err"] == "fenced", answer
    # Rejoined under a new incarnation, and the buffered call was not handled anywhere.
    wait_for(lambda: Node.objects.filter(name=victim, status=NodeStatus.UP).exclude(id=node_row.id).exists(),
             10, "the paused node to rejoin")
    assert Node.objects.get(id=node_row.id).status == NodeStatus.DOWN
    assert Echo.call("perm1", {})["n"] == served_before + 1
    assert cluster3.nodes[victim].alive()
    assert "fenced" in cluster3.nodes[victim].output()


def test_sigterm_drains_with_handoff_then_last_node_keeps_desired_state(cluster_factory):
    c = cluster_factory()
    c.start_node("a")
    c.start_node("b")
    for i in range(10):
        Counter.call(f"ctr{i}", {"op": "incr", "by": i + 1})
        Echo.start(f"e{i}")
        Temporary.start(f"t{i}")
    on_b = rows_on("b")
    assert on_b
    c.kill("b", signal.SIGTERM)
    assert c.wait_exit("b", 20) == 0
    # Before b exited, everything it ran was handed to a (no TTL wait involved).
    assert not rows_on("b")
    for i in range(10):
        assert Counter.call(f"ctr{i}", {"op": "get"})["count"] == i + 1  # state handed off
        assert Echo.call(f"e{i}", {})["node"] == "a"
    # Last node standing: stops cleanly, keeps the desired state in the database.
    c.kill("a", signal.SIGTERM)
    assert c.wait_exit("a", 20) == 0
    running = Process.objects.filter(status=ProcessStatus.RUNNING)
    assert running.count() == 20 and not running.exclude(node=None).exists()
    assert not Process.objects.filter(label=Temporary.label, status=ProcessStatus.RUNNING).exists()
    with pytest.raises(ProcessHubError):
        Echo.call("e0", {}, timeout=1)
    # Full-cluster restart: a new node brings every desired process back.
    c.start_node("fresh")
    wait_for(lambda: not Process.objects.filter(status=ProcessStatus.RUNNING, node=None).exists(), 10,
             "the new node to claim the unassigned processes")
    assert Echo.call("e3", {})["node"] == "fresh"
    assert Counter.call("ctr3", {"op": "get"})["count"] == 4  # handoff state kept across the cold boot


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_server(port, tmp_path):
    return subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)


def test_redis_restart_under_a_running_cluster(cluster_factory, tmp_path):
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = _redis_server(port, tmp_path)
    try:
        wait_for(lambda: redis.Redis.from_url(url).ping(), 10, "private redis")
        c = cluster_factory(redis_url=url)
        c.start_node("a")
        c.start_node("b")
        for i in range(10):
            Echo.call(f"r{i}", {})
        epochs = dict(Process.objects.values_list("process_id", "epoch"))
        server.kill()
        server.wait(5)
        t0 = time.monotonic()
        with pytest.raises(ProcessHubError) as info:
            Echo.call("r1", {}, timeout=2)
        assert time.monotonic() - t0 < 3
        print("while Redis is down:", type(info.value).__name__, info.value)
        server = _redis_server(port, tmp_path)
        back = time.monotonic()
        wait_for(lambda: all(Echo.call(f"r{i}", {}, timeout=1)["epoch"] == epochs[f"r{i}"] for i in range(10)),
                 15, "calls to work again after Redis came back")
        print(f"calls work again {time.monotonic() - back:.2f}s after Redis restarted")
        assert dict(Process.objects.values_list("process_id", "epoch")) == epochs  # nothing moved, lost or doubled
        assert all(n.alive() for n in c.nodes.values())
    finally:
        server.kill()
        server.wait(5)
