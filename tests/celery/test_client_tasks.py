"""Celery tasks as hub clients: the sync API from solo, threads and prefork pools (issue 6)."""
import pytest
import redis

from hubproject.demo.processes import Counter
from hubproject.demo.tasks import crash_counter, incr_counter, poke_counter
from processhub.contrib.celery import purge_finished_task, registry_health_task
from processhub.exceptions import ProcessCrashed
from tests.celery.tasks import runtime_info
from tests.celery.worker import numsub
from tests.cluster.harness import wait_for
from tests.conftest import REDIS_URL, needs_services
from tests.hubtest.processes import Echo

pytestmark = [needs_services, pytest.mark.cluster]


@pytest.mark.parametrize("pool", ["solo", "threads", "prefork"])
def test_tasks_call_and_cast_processes_on_runhub_nodes(cluster_factory, celery_worker, pool):
    cluster = cluster_factory()
    for name in ("a", "b"):
        cluster.start_node(name, wait=False)
    worker = celery_worker(cluster, pool)
    for name in ("a", "b"):
        cluster.wait_up(name)
    worker.wait_ready()

    # One runtime per worker OS process, shared by its tasks (and threads); the
    # prefork parent has none. Every runtime subscribes once to the events channel.
    r = redis.Redis.from_url(REDIS_URL)
    events = f"{cluster.prefix}.events.framed"
    Echo.call("warm-up", {})  # the test process's own runtime exists from here on
    assert numsub(r, events) == 2 + 1, "the worker made a runtime before running any task"
    infos = [res.get(timeout=30) for res in [worker.send(runtime_info, f"rt{i}", 0.05) for i in range(10)]]
    by_pid: dict[int, set[str]] = {}
    for info in infos:
        assert info["runtime_pid"] == info["pid"]
        assert info["live_nodes"] == ["a", "b"] and info["echo"]["node"] in ("a", "b")
        assert info["hosts_node"] is None
        by_pid.setdefault(info["pid"], set()).add(info["reply_channel"])
    assert all(len(channels) == 1 for channels in by_pid.values()), by_pid
    if pool == "prefork":
        assert worker.pid not in by_pid and {i["ppid"] for i in infos} == {worker.pid}
    else:
        assert set(by_pid) == {worker.pid}
    if pool == "threads":
        assert len({i["thread"] for i in infos}) >= 2, "the tasks should have run on both threads"
    assert numsub(r, events) == 2 + 1 + len(by_pid)
    assert {i["echo"]["node"] for i in infos} == {"a", "b"}

    # Calls: results come back through Celery; counters live on both runhub nodes.
    names = [f"ctr{i}" for i in range(6)]
    replies = [res.get(timeout=30) for res in [worker.send(incr_counter, n, i + 1) for i, n in enumerate(names)]]
    assert [rep["count"] for rep in replies] == [1, 2, 3, 4, 5, 6]
    assert {rep["node"] for rep in replies} == {"a", "b"}

    # Casts: fire and forget from the worker; each one lands.
    for res in [worker.send(poke_counter, "ctr0") for _ in range(5)]:
        assert res.get(timeout=30) is None
    wait_for(lambda: Counter.call("ctr0", {"op": "get"})["count"] == 1 + 5, 10, "the casts to be handled")

    # A crash in the process is the task's failure, with the hub's exception type.
    with pytest.raises(ProcessCrashed, match="asked to crash"):
        worker.run(crash_counter, "ctr1")

    # The maintenance tasks run in the worker too.
    health = worker.run(registry_health_task)
    assert health["ok"] and health["live_nodes"] == ["a", "b"] and health["processes"]["running"] == 17
    assert worker.run(purge_finished_task) == {"processes": 0, "nodes": 0, "retention": 7 * 24 * 3600.0,
                                               "more": False}

    assert worker.stop(30) == 0, worker.output()[-3000:]
    wait_for(lambda: not worker.group_alive(), 5, "the pool processes to exit with the worker")
    assert worker.problems() == []
