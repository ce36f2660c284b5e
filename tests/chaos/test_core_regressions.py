"""Regression tests for core bugs the chaos suite found (issue 3), on one embedded node for speed.

A frozen process (SIGSTOP, a VM pause, a long GC) is emulated by blocking the
node's event loop with ``time.sleep`` at the exact point under test: that is
what a freeze looks like from inside, and unlike a real signal it lands on the
line we choose.
"""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from processhub import store
from processhub.models import Process, ProcessStatus
from processhub.runtime import get_runtime
from tests.cluster.harness import wait_for
from tests.hubtest.processes import ChaosRecorder, SlowInit

pytestmark = [pytest.mark.chaos]


def _freeze_past_lease(node) -> None:
    """Block the node's loop until its lease has run out (and a bit): the process froze here."""
    time.sleep(max(0.0, node.lease.lease.soft - node.clock.now()) + 0.3)


def _orphans(recording, n: int) -> list[str]:
    pids = [f"orphan{i}" for i in range(n)]
    Process.objects.bulk_create(
        Process(label=ChaosRecorder.label, process_id=p, arg=recording.arg(p), node=None, epoch=1,
                status=ProcessStatus.RUNNING, restart="permanent") for p in pids)
    return pids


def _wait_refenced_and_running(node, old_id: str, pids: list[str], recording) -> None:
    wait_for(lambda: node.id != old_id and node.lease_valid(), 10, "the node to fence and rejoin")
    since = time.time()
    recording.wait_alive(pids, since, 10)


def test_claim_completing_after_a_freeze_does_not_activate(embedded, recording):
    """A takeover claim whose answer is read after the lease ran out must not start anything.

    Bug: ``Node.current`` only looked at the fenced flag, which the watchdog sets
    *after* the loop wakes up; a claim result handled first activated rows under an
    expired lease, possibly already re-claimed by another node (I1).
    """
    node = embedded.node
    original = node.write
    frozen = threading.Event()

    async def write_then_freeze(fn, *args, **kwargs):
        result = await original(fn, *args, **kwargs)
        if fn is store.claim and result and not frozen.is_set():
            frozen.set()
            _freeze_past_lease(node)
        return result

    old_id = node.id
    node.write = write_then_freeze
    try:
        pids = _orphans(recording, 5)
        embedded.loop.call_soon_threadsafe(node.reconciler.wake)
        wait_for(frozen.is_set, 10, "the node to claim the orphans")
        _wait_refenced_and_running(node, old_id, pids, recording)
    finally:
        node.write = original
    verdict = recording.judge(pids, None)
    print(recording.events())
    print(verdict.summary())
    assert not verdict.late_starts, verdict.summary()
    assert verdict.ok, verdict.summary()


def test_activation_frozen_before_its_first_step_does_not_start(embedded, recording):
    """An activation created just before a freeze must check the lease before init.

    Bug: ``Activation._run`` ran ``init`` without a lease check; after a freeze its first
    step runs before the watchdog's (already queued ahead of the watchdog's timer),
    so init ran with an expired lease.
    """
    node = embedded.node
    original = node.activate
    frozen = threading.Event()

    def activate_then_freeze(row, origin):
        act = original(row, origin)
        if not frozen.is_set():
            frozen.set()
            _freeze_past_lease(node)
        return act

    old_id = node.id
    node.activate = activate_then_freeze
    try:
        pids = _orphans(recording, 3)
        embedded.loop.call_soon_threadsafe(node.reconciler.wake)
        wait_for(frozen.is_set, 10, "the node to activate an orphan")
        _wait_refenced_and_running(node, old_id, pids, recording)
    finally:
        node.activate = original
    verdict = recording.judge(pids, None)
    print(verdict.summary())
    assert not verdict.late_starts, verdict.summary()
    assert verdict.ok, verdict.summary()


def test_start_answered_when_its_activation_is_killed_during_init(embedded):
    """A start waiting for an init that never finishes (the node fenced meanwhile) must not hang.

    Bug: ``Activation.kill`` cancelled the activation task but left ``slot.ready`` pending,
    so the starter waited for its whole timeout (CallTimeout) instead of retrying.
    """
    node = embedded.node
    client = get_runtime().client
    result: dict = {}

    def starter():
        t0 = time.monotonic()
        try:
            result["ref"] = embedded.run_sync(client.start(SlowInit, {"id": "slow", "s": 1.0}, timeout=8))
        except Exception as exc:  # noqa: BLE001 - judged below
            result["error"] = exc
        result["took"] = time.monotonic() - t0

    thread = threading.Thread(target=starter)
    thread.start()
    wait_for(lambda: (SlowInit.label, "slow") in node.activations, 5, "the slow init to begin")
    asyncio.run_coroutine_threadsafe(node.lease.fence("test: lease lost during init"), embedded.loop).result(10)
    thread.join(15)
    print(result)
    assert "error" not in result, result
    # Retried on the rejoined incarnation: two inits (1 s each) plus the fence, well under the 8 s timeout.
    assert result["ref"].node_id == node.id and result["took"] < 5, result


def test_unstorable_start_argument_is_refused_and_does_not_poison_its_batch(embedded):
    """A start argument with a NUL (or a lone surrogate) is refused by name, alone.

    Bug: PostgreSQL cannot store either in jsonb; the group-committed INSERT of the
    whole batch failed, and every start batched with it failed after five rounds
    with ProcessUnavailable("start kept racing") -- one bad caller failed everybody.
    """
    from processhub import wire
    from processhub.exceptions import InvalidArgument
    from tests.chaos.load import run_many
    from tests.hubtest.processes import Sink

    for bad in ({"id": "n", "x": "a\x00b"}, {"id": "s", "x": ["\udc80"]}, {"id": "k", "x": {"\x00": 1}}):
        with pytest.raises(InvalidArgument):
            Sink.start(bad)
    client = get_runtime().client
    node = embedded.node

    async def start(i):
        if i % 10 == 3:  # a raw message, as a client without checks would send it
            env = {"t": wire.START, "l": Sink.label, "p": f"bad{i}", "a": {"id": f"bad{i}", "x": "\x00"}}
            return await client.request(node.channel, env, 5)
        return await client.start(Sink, {"id": f"good{i}"}, timeout=5)

    results = run_many(start, list(range(40)), concurrency=40)
    for i, r in enumerate(results):
        if i % 10 == 3:
            assert r["ok"] is False and r["err"] == wire.E_INVALID, r
        else:
            assert not isinstance(r, Exception) and r.created, (i, r)


def test_start_during_a_resync_kill_does_not_make_twin_instances(embedded, recording):
    """A start that activates a row while the resync is busy killing a stale slot must win alone.

    Bug: ``Reconciler.sync_own`` decided what to activate, then awaited the kills, then
    activated from its stale decision; a start that had activated the same row
    meanwhile was "superseded" by a second instance of the same epoch, the two
    alive together (I1, invisible to an epoch-keyed detector).
    """
    from django.db import transaction
    from django.db.models import F

    from tests.hubtest.processes import SlowTerminate

    node = embedded.node
    SlowTerminate.start({"id": "slow-stop", "s": 1.5})
    with transaction.atomic():
        # A row naming this node that it does not run (as after a hand-off to it): the resync activates it,
        Process.objects.create(label=ChaosRecorder.label, process_id="twin", arg=recording.arg("twin"),
                               node_id=node.id, epoch=5, status=ProcessStatus.RUNNING, restart="permanent")
        # after killing (slowly) a slot whose row moved on.
        Process.objects.filter(label=SlowTerminate.label, process_id="slow-stop").update(epoch=F("epoch") + 1)
    wait_for(lambda: (SlowTerminate.label, "slow-stop") not in node.activations, 5, "the resync to start the kill")
    ref = ChaosRecorder.start(recording.arg("twin"))
    assert ref.epoch == 5
    wait_for(lambda: (SlowTerminate.label, "slow-stop") in node.activations, 10, "the resync to finish and run again")
    since = time.time()
    recording.wait_alive(["twin"], since, 5)
    verdict = recording.judge(["twin"], since)
    print(verdict.summary())
    instances = {e["inst"] for e in recording.events() if e["pid"] == "twin"}
    assert not verdict.twins and len(instances) == 1, (verdict.summary(), instances)


def test_guided_start_refreshes_a_stale_live_set(embedded):
    """A start placed on a named node that joined after the client's last look must find it.

    Bug: with ``node=``, the client raised NoLiveNodes from its cached live set
    (refreshed once per heartbeat) without asking the database again, so a start
    right after the node (re)joined failed (seen after a partition healed).
    """
    client = get_runtime().client
    node = embedded.node

    def forget_nodes():
        client.live, client.live_at = {}, time.monotonic()  # a fresh-looking cache without the node

    embedded.loop.call_soon_threadsafe(forget_nodes)
    ref = embedded.run_sync(client.start(SlowInit, {"id": "guided", "s": 0}, node=node.name))
    assert ref.node == node.name
