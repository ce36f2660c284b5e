"""The node's edge paths on real runhub processes: pauses inside fenced(), takeover at scale, failing inits,
old code still running, moves onto a busy node, handoff order, drained nodes (DESIGN I9, I10).

Each test states the promise it checks; budgets come from the cluster's own settings.
"""
from __future__ import annotations

import json
import signal
import time

import psycopg
import pytest
import redis
from django.db.models.functions import Now

from processhub.exceptions import NoLiveNodes, UnknownProcessClass
from processhub.models import Node, NodeStatus, Process, ProcessStatus
from processhub.node.lease import EXIT_STUCK_USER_CODE
from processhub.runtime import get_runtime
from tests.cluster.harness import wait_for
from tests.conftest import REDIS_URL, needs_services, test_database_url
from tests.edgeapp.processes import FailOnce, FencedSleeper, HandoffOrder, LineLogger, StartCounter
from tests.edgeonly.processes import OnlySome
from tests.hubtest.processes import Echo

pytestmark = [needs_services, pytest.mark.cluster]


def budget(c) -> float:
    """DESIGN I9: a row whose owner's lease ended is taken over within NODE_TTL + RECONCILE_INTERVAL + 1 s."""
    return c.settings["NODE_TTL"] + c.settings["RECONCILE_INTERVAL"] + 1.0


def incarnation(name: str) -> str:
    return (Node.objects.filter(name=name, status=NodeStatus.UP, lease_expires_at__gt=Now())
            .order_by("-started_at").values_list("id", flat=True)[0])


def live_ids() -> set[str]:
    return set(Node.objects.filter(status__in=[NodeStatus.UP, NodeStatus.DRAINING], lease_expires_at__gt=Now())
               .values_list("id", flat=True))


def bulk_rows(label: str, owner: str, n: int, prefix: str, arg=None) -> None:
    Process.objects.bulk_create(
        (Process(label=label, process_id=f"{prefix}{i}", arg=f"{prefix}{i}" if arg is None else arg(i), node_id=owner,
                 epoch=1, status=ProcessStatus.RUNNING, restart="permanent") for i in range(n)), batch_size=5000)


# ------------------------------------------------------------------ 1. paused inside fenced()


def test_node_paused_inside_fenced_is_taken_over_in_time_and_its_write_never_commits(cluster_factory):
    """The paused owner holds its row's lock; the library itself ends that session (no session options
    in the project's settings), so a new owner claims the row within the budget, and the write the
    zombie made inside fenced() is rolled back, never committed."""
    c = cluster_factory()
    c.start_node("a")
    c.start_node("b")
    rt = get_runtime()
    ref = FencedSleeper.start("held", node="a")
    victim = ref.node_id
    # A call that writes inside fenced() and then holds the transaction open; it never gets an answer.
    rt.loop.call_soon_threadsafe(
        lambda: rt.loop.create_task(rt.client.call(FencedSleeper, "held", {"op": "write_and_hold", "hold": 30,
                                                                           "value": "zombie"}, timeout=60)))
    with psycopg.connect(test_database_url(), autocommit=True) as spy:
        wait_for(lambda: spy.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                     [f"processhub-fenced:{victim}"]).fetchone()[0] == 1, 10,
                 "the handler to hold its fenced() transaction")
        c.kill("a", signal.SIGSTOP)
        paused = time.monotonic()
        row = wait_for(lambda: Process.objects.filter(label=FencedSleeper.label, process_id="held",
                                                      node_id__in=live_ids() - {victim}, epoch=2).first(),
                       budget(c) + 10, "a new owner")
        took = time.monotonic() - paused
        print(f"new owner {row.node_id} {took:.2f}s after the pause (budget {budget(c):.2f}s)")
        assert took <= budget(c)
        assert row.metadata.get("value") != "zombie"
        # The new owner can write: the lock is gone.
        assert FencedSleeper.call("held", {"op": "write_and_hold", "hold": 0, "value": "new"}) == "committed"
        c.kill("a", signal.SIGCONT)
        # The zombie finds its lease gone with its plain def handler still running: it ends its OS process.
        assert c.wait_exit("a", 30) == EXIT_STUCK_USER_CODE
    assert Process.objects.get(label=FencedSleeper.label, process_id="held").metadata["value"] == "new"


# ------------------------------------------------------------------ 2. takeover at scale


@pytest.mark.slow
def test_sigkill_of_a_node_owning_ten_thousand_processes_fails_over_in_time(cluster_factory, caplog):
    """Every row of a killed node is re-owned within the budget, however many: rows are read in pages and
    claimed in batches on every pass. 2,500 rows that no live node can run, ahead of the others, neither
    stop the rest nor flood the log."""
    c = cluster_factory(settings={"NODE_TTL": 3.0, "LEASE_SAFETY_MARGIN": 0.6})
    for name in ("a", "b", "c"):
        c.start_node(name, wait=False)
    for name in ("a", "b", "c"):
        c.wait_up(name)
    victim = incarnation("a")
    bulk_rows("ghost.Nobody", victim, 2500, "ghost")  # lower ids: read first on every pass
    bulk_rows(Echo.label, victim, 10_000, "many")
    Process.objects.filter(label=Echo.label, node_id=victim).update(epoch=1)
    rt = get_runtime()
    rt.run_sync(rt.client.nodes(True))
    # a activates its rows (its reconcile finds rows naming it that it does not run).
    wait_for(lambda: Echo.call("many9999", {}, timeout=5)["node"] == "a", 120, "a to run its rows", interval=0.5)
    c.kill("a")
    killed = time.monotonic()
    c.wait_exit("a")

    def moved():
        return Process.objects.filter(label=Echo.label, node_id__in=live_ids() - {victim}, epoch=2).count() == 10_000

    wait_for(moved, budget(c) + 30, "10,000 rows re-owned", interval=0.05)
    took = time.monotonic() - killed
    print(f"10,000 processes re-owned {took:.2f}s after SIGKILL (budget {budget(c):.2f}s)")
    for name in ("b", "c"):
        print("\n".join(ln for ln in c.nodes[name].output().splitlines() if "took over" in ln))
    assert took <= budget(c)
    assert Process.objects.filter(label="ghost.Nobody", node_id=victim).count() == 2500  # nobody can run them
    time.sleep(3)  # several reconcile passes with the unrunnable rows still there
    for name in ("b", "c"):
        lines = [ln for ln in c.nodes[name].output().splitlines() if "no live node that can run" in ln]
        assert len(lines) <= 1, lines  # once per UNRUNNABLE_LOG_EVERY, not once per pass or per row
        assert c.nodes[name].output().count("Traceback") == 0


# ------------------------------------------------------------------ 3. a failed init on a takeover


def test_init_failing_once_on_the_takeover_node_follows_the_restart_policy(cluster_factory):
    """A permanent process whose init fails once on the node that takes it over is restarted (epoch + 1),
    not given up: every one of them runs again."""
    c = cluster_factory()
    c.start_node("a")
    c.start_node("b")
    args = [{"id": f"f{i}", "fail_epoch": 2} for i in range(30)]
    for arg in args:
        FailOnce.start(arg, node="a")
    c.kill("a")
    wait_for(lambda: Process.objects.filter(label=FailOnce.label, status=ProcessStatus.RUNNING, epoch=3,
                                            node_id__in=live_ids()).count() == 30, budget(c) + 15,
             "every process restarted after its failed init")
    rows = Process.objects.filter(label=FailOnce.label)
    assert {r.status for r in rows} == {ProcessStatus.RUNNING}
    assert all("init refuses epoch 2" in r.last_error and r.restarts == 1 for r in rows)
    assert all(FailOnce.call(arg, {})["epoch"] == 3 for arg in args)


def test_init_failing_on_a_callers_first_start_is_the_callers_error(cluster_factory):
    from processhub.exceptions import ProcessCrashed

    c = cluster_factory()
    c.start_node("a")
    with pytest.raises(ProcessCrashed, match="init refuses epoch 1"):
        FailOnce.start({"id": "first", "fail_epoch": 1})
    assert Process.objects.get(label=FailOnce.label, process_id="first").status == ProcessStatus.FAILED


# ------------------------------------------------------------------ 4. old code still running


def _lines(path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def _pause_during_slow_handler(c, path, victim_name):
    arg = {"id": "logger", "path": str(path)}
    LineLogger.start(arg, node=victim_name)
    LineLogger.cast(arg, {"op": "slow", "steps": 100, "every": 0.2})
    wait_for(lambda: len([x for x in _lines(path) if x["what"].startswith("step")]) >= 2, 10, "the slow handler")
    c.kill(victim_name, signal.SIGSTOP)
    return arg


def test_one_node_paused_past_its_lease_never_runs_old_and_new_epoch_together(cluster_factory, tmp_path):
    """The only node, paused past its lease during a slow plain def handler: after SIGCONT no line of the
    old epoch is written after the new epoch's init (the node ends its OS process; its process manager,
    here the test, starts it again)."""
    c = cluster_factory()
    c.start_node("a")
    path = tmp_path / "lines.jsonl"
    arg = _pause_during_slow_handler(c, path, "a")
    time.sleep(c.settings["NODE_TTL"] + 1.0)
    c.kill("a", signal.SIGCONT)
    assert c.wait_exit("a", 30) == EXIT_STUCK_USER_CODE
    c.start_node("a")
    assert wait_for(lambda: LineLogger.call(arg, {}, timeout=5)["epoch"] == 2, budget(c) + 15, "epoch 2")
    lines = _lines(path)
    new_init = min(x["t"] for x in lines if x["epoch"] == 2 and x["what"] == "init")
    late = [x for x in lines if x["epoch"] == 1 and x["t"] >= new_init]
    assert not late, late


def test_owner_paused_past_its_lease_stops_old_code_at_once_after_sigcont(cluster_factory, tmp_path):
    """Three nodes, the same pause on the owner: the process runs elsewhere, and the old epoch writes no
    line more than 100 ms after SIGCONT."""
    c = cluster_factory()
    for name in ("a", "b", "c"):
        c.start_node(name, wait=False)
    for name in ("a", "b", "c"):
        c.wait_up(name)
    path = tmp_path / "lines.jsonl"
    arg = _pause_during_slow_handler(c, path, "a")
    wait_for(lambda: LineLogger.call(arg, {}, timeout=2)["epoch"] == 2, budget(c) + 15, "a takeover")
    c.kill("a", signal.SIGCONT)
    resumed = time.time()
    assert c.wait_exit("a", 30) == EXIT_STUCK_USER_CODE
    late = [x for x in _lines(path) if x["epoch"] == 1 and x["t"] > resumed + 0.1]
    assert not late, late


def test_embedded_node_waits_for_old_code_before_it_starts_the_id_again(embedded, tmp_path):
    """I10 in one OS process: the embedded node cannot exit, so after losing its lease during a slow plain
    def handler it starts that id again only once the old handler has returned."""
    import asyncio

    node = embedded.node
    path = tmp_path / "lines.jsonl"
    arg = {"id": "embedded-logger", "path": str(path)}
    LineLogger.start(arg)
    LineLogger.cast(arg, {"op": "slow", "steps": 15, "every": 0.2})
    wait_for(lambda: any(x["what"] == "step 1" for x in _lines(path)), 10, "the slow handler")
    asyncio.run_coroutine_threadsafe(node.lease.fence("test: lease lost"), embedded.loop).result(10)
    assert wait_for(lambda: LineLogger.call(arg, {}, timeout=5)["epoch"] >= 2, 30, "the id running again")
    lines = _lines(path)
    old_last = max(x["t"] for x in lines if x["epoch"] == 1)
    new_init = min(x["t"] for x in lines if x["epoch"] >= 2 and x["what"] == "init")
    assert any(x["what"] == "step 14" for x in lines)  # the old handler ran to its end ...
    assert new_init > old_last  # ... before the new epoch's init


# ------------------------------------------------------------------ 5. moved onto a busy node


@pytest.mark.slow
def test_drain_onto_a_node_owning_twenty_thousand_starts_each_moved_id_once(cluster_factory):
    """A full own-rows read that began before a move committed must not kill the freshly moved activation:
    exactly one start per id on the receiving node, handoff state intact."""
    c = cluster_factory(settings={"FULL_RESYNC_INTERVAL": 0.5})  # a full read of 22,000 rows on every pass
    c.start_node("b")
    busy = incarnation("b")
    bulk_rows(Echo.label, busy, 20_000, "bulk")
    wait_for(lambda: Echo.call("bulk19999", {}, timeout=5)["node"] == "b", 120, "b to run 20,000", interval=0.5)
    c.start_node("a")
    key = f"starts:{c.prefix}"
    r = redis.Redis.from_url(REDIS_URL)
    rt = get_runtime()
    args = [{"id": f"m{i}", "key": key} for i in range(2000)]

    async def start_all():
        import asyncio

        sem = asyncio.Semaphore(100)

        async def one(arg):
            async with sem:
                return await rt.client.start(StartCounter, arg, 30, "a")

        return await asyncio.gather(*(one(a) for a in args))

    rt.run_sync(start_all(), 300)
    assert {int(v) for v in r.hvals(key)} == {1}
    assert rt.run_sync(rt.client.drain("a")) == 2000
    wait_for(lambda: Process.objects.filter(label=StartCounter.label, node_id=busy).count() == 2000, 60,
             "every moved row on b")
    time.sleep(3)  # several full reads of b's rows after the moves
    counts = {k.decode(): int(v) for k, v in r.hgetall(key).items()}
    assert set(counts.values()) == {2}, {k: v for k, v in counts.items() if v != 2}
    for arg in args[:200]:
        reply = StartCounter.call(arg, {})
        i = int(arg["id"][1:])
        assert reply["node"] == "b" and reply["token"] == (f"t-m{i}" if i % 2 == 0 else None), (arg, reply)
    r.delete(key)


# ------------------------------------------------------------------ 6. handoff order


def test_begin_handoff_runs_before_terminate(cluster_factory):
    c = cluster_factory()
    c.start_node("a")
    c.start_node("b")
    key = f"handoff:{c.prefix}"
    r = redis.Redis.from_url(REDIS_URL)
    arg = {"id": "order", "key": key}
    HandoffOrder.start(arg, node="a")
    rt = get_runtime()
    assert rt.run_sync(rt.client.move(HandoffOrder.label, "order", "b"))
    reply = wait_for(lambda: HandoffOrder.call(arg, {}, timeout=2), 10, "the moved process")
    assert reply["node"] == "b"
    assert reply["received"] == {"log": ["init", "begin_handoff"]}  # terminate had not run yet
    [ended] = [json.loads(x) for x in r.lrange(key, 0, -1)]
    assert ended["reason"] == "handoff" and ended["log"] == ["init", "begin_handoff", "terminate:handoff"]
    r.delete(key)


# ------------------------------------------------------------------ 7. drained nodes


def test_undrain_and_a_drained_node_as_the_last_one_standing(cluster_factory):
    c = cluster_factory()
    c.start_node("a")
    c.start_node("b")
    rt = get_runtime()
    rt.run_sync(rt.client.drain("a"))
    wait_for(lambda: Node.objects.get(id=incarnation_any("a")).status == NodeStatus.DRAINING, 5, "a drained")
    fresh = [f"u{i}" for i in range(40)]
    assert {Echo.start(p).node for p in fresh} == {"b"}  # a drained node takes nothing while b can
    rt.run_sync(rt.client.undrain("a"))
    wait_for(lambda: Node.objects.get(id=incarnation_any("a")).status == NodeStatus.UP, 5, "a undrained")
    rt.run_sync(rt.client.nodes(True))
    assert "a" in {Echo.start(f"v{i}").node for i in range(40)}  # takes new processes again
    # The last node that is up dies; the drained one is still there: starts go to it, not NoLiveNodes.
    rt.run_sync(rt.client.drain("a"))
    wait_for(lambda: Node.objects.get(id=incarnation_any("a")).status == NodeStatus.DRAINING, 5, "a drained")
    c.kill("b")
    c.wait_exit("b")
    ref = wait_for(lambda: Echo.start("after-b"), budget(c) + 10, "a start on the drained node")
    assert ref.node == "a"
    # ... and b's processes run there too (nowhere else can take them).
    wait_for(lambda: Process.objects.filter(label=Echo.label, status=ProcessStatus.RUNNING,
                                            node_id=incarnation_any("a")).count()
             == Process.objects.filter(label=Echo.label, status=ProcessStatus.RUNNING).count(),
             budget(c) + 10, "b's processes on the drained node")


def incarnation_any(name: str) -> str:
    return (Node.objects.filter(name=name, lease_expires_at__gt=Now()).exclude(status=NodeStatus.DOWN)
            .order_by("-started_at").values_list("id", flat=True)[0])


def test_processes_go_only_to_nodes_that_have_their_class(cluster_factory):
    c = cluster_factory()
    c.start_node("with")
    c.extra_env = {"HUBTEST_WITHOUT_APPS": "tests.edgeonly"}
    c.start_node("without")
    c.extra_env = {}
    refs = [OnlySome.start(f"o{i}") for i in range(30)]
    assert {r.node for r in refs} == {"with"}
    with pytest.raises(UnknownProcessClass, match="cannot run"):
        OnlySome.start("guided", node="without")
    rt = get_runtime()
    # A drain of "with" has nowhere to send them: they stay (a drained node keeps what nobody else can run),
    # while what "without" can run moves there.
    Echo.start("e-on-with", node="with")
    rt.run_sync(rt.client.drain("with"))
    wait_for(lambda: Echo.fetch("e-on-with").node == "without", 10, "the Echo process to move")
    assert {r.node for r in (OnlySome.fetch(f"o{i}") for i in range(30))} == {"with"}
    c.kill("with")
    c.wait_exit("with")
    with pytest.raises(NoLiveNodes, match="can run"):
        OnlySome.start("o-new", timeout=2)
