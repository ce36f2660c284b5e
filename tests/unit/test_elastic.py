"""Elastic cluster, pure parts and the embedded node: idle passivation and revival, rebalancing decisions."""
from __future__ import annotations

import gc
import time
import weakref
from types import SimpleNamespace

import pytest

from processhub import hub
from processhub.exceptions import ProcessNotRunning
from processhub.models import Process, ProcessStatus
from processhub.node.passivation import Passivator, is_idle
from processhub.node.rebalance import Placed, TokenBucket, misplaced
from processhub.placement import choose_node
from processhub.values import NodeInfo
from tests.cluster.harness import wait_for
from tests.edgeapp.processes import Idler
from tests.hubtest.processes import Echo


@pytest.mark.parametrize("last, timers, queued, busy, timeout, now, expected", [
    (0.0, 0, False, False, 10.0, 10.0, True),  # idle for exactly its timeout
    (0.0, 0, False, False, 10.0, 9.9, False),  # not yet
    (0.0, 1, False, False, 10.0, 99.0, False),  # a timer will fire: it expects to work
    (0.0, 0, True, False, 10.0, 99.0, False),  # messages are waiting
    (0.0, 0, False, True, 10.0, 99.0, False),  # stopping or moving already
    (0.0, 0, False, False, None, 99.0, False),  # no idle_timeout: never
])
def test_is_idle(last, timers, queued, busy, timeout, now, expected):
    assert is_idle(last, timers, queued, busy, timeout, now) is expected


class _FakeActivation:
    def __init__(self, cls, last_active):
        self.cls, self.last_active, self.timers, self.busy, self.posted = cls, last_active, 0, False, []
        self.mailbox = SimpleNamespace(empty=lambda: True)

    def post(self, item):
        self.posted.append(item)


def test_a_pass_asks_a_bounded_number_and_says_more_are_due():
    """100,000 processes idle at once are asked in slices (a loop turn each), not all in one turn: one turn of
    100,000 begin_handoff/terminate calls kept heartbeats waiting until the node lost its lease."""
    acts = {("x", str(i)): _FakeActivation(Idler, 0.0) for i in range(1200)}
    acts[("x", "awake")] = _FakeActivation(Idler, 99.9)  # handled a message just now
    node = SimpleNamespace(activations=acts, hs=SimpleNamespace(IDLE_TIMEOUT=None))
    passivator = Passivator(node)
    assert passivator.step(100.0, limit=500) == (500, True)
    assert passivator.step(100.0, limit=500) == (500, True)
    assert passivator.step(100.0, limit=500) == (200, False)
    assert passivator.step(100.0, limit=500) == (0, False)  # asked ones are busy now
    assert sum(len(a.posted) for a in acts.values()) == 1200 and not acts[("x", "awake")].posted


def nodes(*names, status="up"):
    return [NodeInfo(f"id-{n}", n, f"ch-{n}", frozenset({"a.X"}), status) for n in names]


def test_misplaced_moves_only_what_placement_puts_elsewhere():
    live = nodes("a", "b", "c")
    keys = [("a.X", f"p{i}") for i in range(60)]
    here = [Placed(k, guided=False, busy=False) for k in keys]
    plan = misplaced(here, live, "id-a", None)
    assert plan and all(t.id == choose_node(k[0], k[1], live).id != "id-a" for k, t in plan)
    assert len(plan) == sum(1 for k in keys if choose_node(k[0], k[1], live).id != "id-a")
    guided = [Placed(k, guided=True, busy=False) for k in keys]
    busy = [Placed(k, guided=False, busy=True) for k in keys]
    assert misplaced(guided, live, "id-a", None) == [] and misplaced(busy, live, "id-a", None) == []
    assert misplaced(here, nodes("a"), "id-a", None) == []  # alone: nowhere to go
    # A drained node is not a target; a node without the class is not either.
    drained = nodes("a") + nodes("b", status="draining")
    assert misplaced(here, drained, "id-a", None) == []
    classless = nodes("a") + [NodeInfo("id-z", "z", "ch-z", frozenset(), "up")]
    assert misplaced(here, classless, "id-a", None) == []


def test_token_bucket_bounds_the_rate():
    bucket = TokenBucket(10.0, 5.0, now=0.0)
    bucket.refill(0.1)
    assert [bucket.take() for _ in range(2)] == [True, False]
    bucket.refill(10.0)  # a long pause saves up at most the burst
    assert sum(bucket.take() for _ in range(100)) == 5


def test_an_idle_process_is_passivated_and_revived_with_its_state(embedded):
    first = Idler.call("idle1", {})
    assert first["count"] == 1
    row = wait_for(lambda: Process.objects.filter(label=Idler.label, process_id="idle1",
                                                  status=ProcessStatus.IDLE).first(), 10, "passivation")
    assert row.node_id is None and row.handoff == {"count": 1}
    assert Idler.fetch("idle1") is None
    assert [r.process_id for r in hub.process_list(label=Idler.label, status="idle")] == ["idle1"]
    again = Idler.call("idle1", {})  # the next message activates it again, with its state
    assert again == {"arg": "idle1", "count": 2, "epoch": first["epoch"] + 1, "node": "embedded", "restored": True}
    wait_for(lambda: Process.objects.filter(label=Idler.label, status=ProcessStatus.IDLE).exists(), 10,
             "passivation again")
    assert Idler.call("idle1", {}, start=False)["count"] == 3  # start=False wakes a passivated process too
    with pytest.raises(ProcessNotRunning):
        Idler.call("never-started", {}, start=False)


def test_a_process_seen_idle_is_woken_in_one_statement_and_a_stale_hint_changes_nothing(embedded, monkeypatch):
    from processhub import store
    from processhub.runtime import get_runtime
    woken, inserted = [], []
    wake, insert = store.wake_idle, store.insert_new
    monkeypatch.setattr(store, "wake_idle", lambda node_id, keys: woken.append(list(keys)) or wake(node_id, keys))
    monkeypatch.setattr(store, "insert_new", lambda node_id, items: inserted.extend(i[:2] for i in items)
                        or insert(node_id, items))
    first = Idler.call("hint1", {})
    wait_for(lambda: Process.objects.filter(label=Idler.label, process_id="hint1", status=ProcessStatus.IDLE).exists(),
             10, "passivation")
    inserted.clear()
    again = Idler.call("hint1", {})  # its lookup sees the row idle: the start carries the hint
    assert again["restored"] is True and again["epoch"] == first["epoch"] + 1 and again["count"] == 2
    assert woken == [[(Idler.label, "hint1")]] and inserted == [], "woken by the one UPDATE, no INSERT tried"
    # A hint the row no longer matches (a key never started, a stopped row) takes the usual path.
    client = get_runtime().client
    client._seen_idle[(Idler.label, "hint-new")] = None
    assert Idler.call("hint-new", {})["count"] == 1
    Idler.stop("hint1")
    woken.clear()
    client._seen_idle[(Idler.label, "hint1")] = None
    ref = Idler.start("hint1")  # stopped, not idle: the UPDATE matches nothing and the start restarts it
    assert woken == [[(Idler.label, "hint1")]], "the hint was sent"
    assert ref.epoch > again["epoch"] and Idler.call("hint1", {})["restored"] is False
    assert Process.objects.filter(label=Idler.label, process_id__in=["hint1", "hint-new"],
                                  status=ProcessStatus.RUNNING).count() == 2


def test_a_pending_timer_keeps_a_process_awake(embedded):
    Idler.call("sleepy", {"op": "timer", "s": 1.5})
    time.sleep(1.0)  # twice its idle_timeout, but a timer is pending
    assert Process.objects.get(label=Idler.label, process_id="sleepy").status == ProcessStatus.RUNNING
    wait_for(lambda: Process.objects.get(label=Idler.label, process_id="sleepy").status == ProcessStatus.IDLE, 10,
             "passivation once the timer fired")


def test_many_processes_going_idle_at_once_all_passivate_and_the_node_keeps_its_lease(embedded):
    node = embedded.node
    incarnation = node.id
    ids = [f"mass{i:04d}" for i in range(1500)]
    assert not Idler.start_many(ids).errors
    wait_for(lambda: Process.objects.filter(label=Idler.label, process_id__in=ids, status=ProcessStatus.IDLE).count()
             == len(ids), 60, "every process to passivate", interval=0.2)
    assert node.id == incarnation, "the node fenced while passivating"
    wanted = set(ids)
    wait_for(lambda: not any(k[0] == Idler.label and k[1] in wanted for k in list(node.activations)), 5,
             "the node to forget the passivated activations")
    assert Idler.call("mass0007", {})["restored"] is True


def test_ended_activations_are_freed_without_the_cyclic_collector(embedded):
    """A node with 100,000 passivated processes must not need a full collection to get their memory back:
    an ended activation (passivated or stopped) leaves no reference cycle behind."""
    node = embedded.node
    Idler.call("freed-idle", {})
    Echo.start("freed-stop")
    refs = [weakref.ref(node.activations[(Idler.label, "freed-idle")]),
            weakref.ref(node.activations[(Echo.label, "freed-stop")])]
    instances = [weakref.ref(node.activations[(Idler.label, "freed-idle")].instance)]
    gc.collect()
    gc.disable()
    try:
        Echo.stop("freed-stop")
        wait_for(lambda: Process.objects.filter(label=Idler.label, process_id="freed-idle",
                                                status=ProcessStatus.IDLE).exists(), 10, "passivation")
        wait_for(lambda: all(r() is None for r in refs + instances), 5,
                 "the ended activations to be freed by reference counting")
    finally:
        gc.enable()
