"""A hub node hosted by a Celery worker (``--hub-node``): shares processes with runhub, fails over, drains."""
import signal
import socket
import time

import pytest
import redis

from hubproject.celery import app
from hubproject.demo.processes import Counter
from processhub.models import Node, NodeStatus, Process, ProcessStatus
from tests.celery.tasks import echo_call, runtime_info
from tests.celery.worker import numsub
from tests.cluster.harness import FAST, wait_for
from tests.conftest import REDIS_URL, needs_services
from tests.hubtest.processes import Echo

pytestmark = [needs_services, pytest.mark.cluster]

BUDGET = FAST["NODE_TTL"] + FAST["RECONCILE_INTERVAL"]
# Scheduling noise on a shared 2-core machine: a runhub node, a worker and its pool, the test.
SLACK = 2.0


def running_on(name: str) -> dict[tuple[str, str], int]:
    rows = Process.objects.filter(node__name=name, status=ProcessStatus.RUNNING)
    return {(label, pid): epoch for label, pid, epoch in rows.values_list("label", "process_id", "epoch")}


def start_pair(cluster_factory, celery_worker, pool: str, **kwargs):
    """One runhub node "a" and one worker-hosted node "w", started concurrently."""
    cluster = cluster_factory()
    cluster.start_node("a", wait=False)
    worker = celery_worker(cluster, pool, hub_node="w", **kwargs)
    cluster.wait_up("a")
    worker.wait_ready()
    return cluster, worker


def spread_echoes(n: int = 12) -> dict[str, str]:
    where = {f"e{i}": Echo.start(f"e{i}").node for i in range(n)}
    assert set(where.values()) == {"a", "w"}, where
    return where


@pytest.mark.parametrize("pool", ["solo", "prefork"])
def test_worker_node_shares_processes_and_sigkill_moves_them(cluster_factory, celery_worker, pool):
    cluster, worker = start_pair(cluster_factory, celery_worker, pool)
    where = spread_echoes()

    # The node lives in the worker's main process, whatever the pool.
    on_w = sorted(pid for pid, node in where.items() if node == "w")
    reply = Echo.call(on_w[0], {})
    assert reply["node"] == "w" and reply["pid"] == worker.pid
    # Tasks reach processes on both nodes, including the one in their own worker.
    for pid, node in where.items():
        assert worker.run(echo_call, pid, {"from": "task"})["node"] == node

    before = running_on("w")
    assert set(before) == {(Echo.label, pid) for pid in on_w}
    killed_at = time.monotonic()
    worker.signal(signal.SIGKILL)
    wait_for(lambda: not running_on("w"), BUDGET + SLACK, "the killed worker's processes to move")
    failover = time.monotonic() - killed_at
    for (label, pid), epoch in before.items():
        row = Process.objects.select_related("node").get(label=label, process_id=pid)
        assert row.node.name == "a" and row.epoch > epoch
        assert Echo.call(pid, {})["node"] == "a"
    # The pool children die with the main process (Celery sets PR_SET_PDEATHSIG).
    wait_for(lambda: not worker.group_alive(), 5, "the worker's pool processes to exit")
    assert worker.problems() == []
    print(f"[{pool}] failover after SIGKILL of the worker: {failover:.2f}s (budget {BUDGET}s + slack)")


def test_worker_sigterm_drains_with_handoff(cluster_factory, celery_worker):
    cluster, worker = start_pair(cluster_factory, celery_worker, "threads")
    counts = {}
    for i in range(10):
        ref = Counter.start(f"k{i}")
        if ref.node == "w":
            counts[f"k{i}"] = Counter.call(f"k{i}", {"op": "incr", "by": 10 + i})["count"]
    assert counts, "some counters should run on the worker's node"
    before = running_on("w")
    incarnation = Node.objects.get(name="w").id
    # The bootstep reports its node in `celery inspect stats`.
    nodename = worker.hostname.replace("%h", socket.gethostname())
    stats = app.control.inspect([nodename], timeout=10).stats()
    assert stats[nodename]["processhub"] == {"node": "w", "incarnation": incarnation, "processes": len(counts),
                                             "draining": False, "fenced": False}

    stopped_at = time.monotonic()
    worker.signal(signal.SIGTERM)
    wait_for(lambda: not running_on("w"), BUDGET + SLACK, "the drained processes to move")
    moved = time.monotonic() - stopped_at
    assert worker.wait_exit(30) == 0, worker.output()[-3000:]
    exited = time.monotonic() - stopped_at

    for name, count in counts.items():
        # The count lives only in memory: it survives only through begin_handoff/end_handoff.
        reply = Counter.call(name, {"op": "get"})
        assert reply["node"] == "a" and reply["count"] == count
        assert reply["epoch"] == before[(Counter.label, name)] + 1
    node = Node.objects.get(id=incarnation)
    assert node.status == NodeStatus.DOWN and node.stopped_at is not None
    assert worker.problems() == []
    print(f"drain on SIGTERM: processes moved after {moved:.2f}s, worker exited after {exited:.2f}s")


def test_paused_worker_node_fences_and_rejoins(cluster_factory, celery_worker):
    cluster, worker = start_pair(cluster_factory, celery_worker, "solo")
    where = spread_echoes()
    old = Node.objects.get(name="w", status=NodeStatus.UP).id
    before = running_on("w")

    worker.signal(signal.SIGSTOP)
    try:
        wait_for(lambda: not running_on("w"), BUDGET + SLACK, "takeover of the paused worker's processes")
    finally:
        worker.signal(signal.SIGCONT)
    # On waking, the node finds its lease gone: it stops its activations and
    # comes back as a new incarnation under the same name (DESIGN I3).
    wait_for(lambda: Node.objects.filter(name="w", status=NodeStatus.UP).exclude(id=old).exists(), 15,
             "the worker's node to rejoin")
    assert Node.objects.get(id=old).status == NodeStatus.DOWN
    assert "fenced" in worker.output()
    for (_, pid), epoch in before.items():
        reply = Echo.call(pid, {})
        assert reply["node"] == "a" and reply["epoch"] > epoch
    assert all(Echo.call(pid, {})["node"] == node for pid, node in where.items() if node == "a")


def test_prefork_children_forked_after_the_node_do_not_share_its_connections(cluster_factory, celery_worker):
    # --max-tasks-per-child 1: every task runs in a child forked *after* the node
    # started, from a parent whose runtime threads are busy heartbeating.
    cluster, worker = start_pair(cluster_factory, celery_worker, "prefork",
                                 extra_args=("--max-tasks-per-child", "1"))
    where = spread_echoes()
    incarnation = Node.objects.get(name="w", status=NodeStatus.UP).id
    r = redis.Redis.from_url(REDIS_URL)

    ids = sorted(where)
    infos = [res.get(timeout=30) for res in [worker.send(runtime_info, pid) for pid in ids]]
    pids = [i["pid"] for i in infos]
    assert len(set(pids)) == len(pids) and worker.pid not in pids
    # The first children were forked by the pool before the node started: they inherited nothing.
    inherited = [i for i in infos if i["inherited_pid"] is not None]
    assert len(inherited) >= len(infos) - 2
    parent_reply = {i["inherited_reply"] for i in inherited}
    assert len(parent_reply) == 1
    for pid, info in zip(ids, infos, strict=True):
        assert info["inherited_pid"] in (None, worker.pid) and info["ppid"] == worker.pid
        # A child that inherited the parent's runtime object made its own instead of using it.
        assert info["runtime_pid"] == info["pid"] and info["hosts_node"] is None
        assert info["reply_channel"] not in parent_reply
        assert info["live_nodes"] == ["a", "w"] and info["echo"]["node"] == where[pid]
    # The parent's own subscription is intact and still its only one; the
    # parent's node never lost its lease while children came and went.
    assert numsub(r, parent_reply.pop()) == 1
    node = Node.objects.get(id=incarnation)
    assert node.status == NodeStatus.UP and Node.objects.filter(name="w").count() == 1, worker.output()[-6000:]
    for pid, node_name in where.items():
        assert Echo.call(pid, {})["node"] == node_name
    assert worker.problems() == []
