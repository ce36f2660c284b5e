"""Behaviour of one in-process node on the memory transport: the API contract, fast."""
import time

import pytest

from processhub.exceptions import (
    InvalidArgument,
    InvalidMessage,
    ProcessCrashed,
    ProcessNotRunning,
    SyncCallFromAsyncContext,
    UnknownProcessClass,
)
from processhub.models import Process, ProcessStatus
from tests.cluster.harness import wait_for
from tests.hubtest.processes import BadInit, Crashy, Echo, SyncEcho, Temporary, Transient


def test_start_is_idempotent_and_fetch_finds_it(embedded):
    ref = Echo.start("e1")
    assert ref.created and ref.epoch == 1 and ref.process_id == "e1"
    again = Echo.start("e1")
    assert not again.created and (again.node_id, again.epoch) == (ref.node_id, ref.epoch)
    assert Echo.fetch("e1").epoch == 1
    assert Echo.fetch("missing") is None


def test_call_is_get_or_start_and_cast_reaches(embedded):
    assert Echo.call("e2", {"x": 1})["echo"] == {"x": 1}
    Echo.cast("e2", {"y": 2})
    assert Echo.call("e2", {})["casts"] == 1


def test_ids_are_per_class(embedded):
    Echo.start("same")
    Transient.start("same")
    assert Process.objects.filter(process_id="same").count() == 2


def test_crash_reports_remote_traceback_and_restarts(embedded):
    with pytest.raises(ProcessCrashed) as info:
        Echo.call("c1", {"op": "crash"})
    assert info.value.exc_type == "ValueError"
    assert "boom requested" in info.value.remote_traceback and "handle_call" in info.value.remote_traceback
    reply = Echo.call("c1", {})
    assert reply["epoch"] == 2 and reply["n"] == 1
    assert Process.objects.get(process_id="c1").restarts == 1


def test_too_many_crashes_fail_the_process(embedded):
    for _ in range(3):
        with pytest.raises(ProcessCrashed):
            Crashy.call("c2", {"op": "crash"})
    row = Process.objects.get(process_id="c2", label=Crashy.label)
    assert row.status == ProcessStatus.FAILED and "boom requested" in row.last_error
    assert Crashy.fetch("c2") is None


def test_exit_policies(embedded):
    Transient.call("t1", {"op": "exit"})
    assert Process.objects.get(process_id="t1").status == ProcessStatus.STOPPED
    Echo.call("p1", {"op": "exit"})  # permanent: restarted even after a normal exit
    assert Echo.call("p1", {})["epoch"] == 2
    with pytest.raises(ProcessCrashed):
        Temporary.call("tmp1", {"op": "crash"})
    assert Process.objects.get(process_id="tmp1").status == ProcessStatus.STOPPED


def test_init_failure_is_a_crash_and_marks_failed(embedded):
    with pytest.raises(ProcessCrashed, match="init refuses"):
        BadInit.start("b1")
    assert Process.objects.get(process_id="b1").status == ProcessStatus.FAILED


def test_stop_and_restart(embedded):
    Echo.call("s1", {})
    assert Echo.stop("s1") is True
    assert Echo.stop("s1") is False
    assert Echo.fetch("s1") is None
    ref = Echo.start("s1")
    assert ref.created and ref.epoch == 2


def test_bad_input_is_refused_before_sending(embedded):
    with pytest.raises(InvalidArgument):
        Echo.start("")
    with pytest.raises(InvalidArgument):
        Echo.start("x" * 10_000)
    with pytest.raises(InvalidArgument):
        Echo.start(object())
    with pytest.raises(InvalidMessage):
        Echo.call("ok", {"f": object()})
    with pytest.raises(InvalidMessage):
        Echo.call("ok", float("nan"))
    with pytest.raises(UnknownProcessClass):
        type("NotRegistered", (), {"label": "", "process_id": classmethod(lambda c, a: "x")})
        from processhub.client import Client  # noqa: F401
        from processhub.runtime import get_runtime

        get_runtime().client.key_for(type("Nope", (), {"label": "nope.Nope"}), "x")
    assert Process.objects.count() == 0


def test_unserializable_reply_is_an_error_not_a_crash(embedded):
    with pytest.raises(InvalidMessage):
        Echo.call("u1", {"op": "unserializable"})
    assert Echo.call("u1", {})["epoch"] == 1


def test_sync_handlers_and_fenced_write(embedded):
    assert SyncEcho.call("se", {})["n"] == 1
    SyncEcho.call("se", {"op": "fenced_write"})
    assert Process.objects.get(process_id="se").metadata["epoch"] == 1


def test_sync_call_from_async_context_is_refused(embedded):
    import asyncio

    async def inner():
        with pytest.raises(SyncCallFromAsyncContext):
            Echo.call("x", {})
        return await Echo.acall("x", {})

    assert asyncio.run(inner())["echo"] == {}


def test_async_twins(embedded):
    import asyncio

    async def go():
        ref = await Echo.astart("a1")
        assert (await Echo.afetch("a1")).epoch == ref.epoch
        await Echo.acast("a1", {})
        assert (await Echo.acall("a1", {}))["casts"] == 1
        assert await Echo.astop("a1") is True
        assert await Echo.afetch("a1") is None
        assert await Echo.astop("a1") is False

    asyncio.run(go())


def test_call_queued_behind_a_normal_exit_gets_process_not_running(embedded):
    import asyncio

    async def go():
        await Transient.astart("q1")
        busy = asyncio.ensure_future(Transient.acall("q1", {"op": "sleep", "s": 0.5}))
        await asyncio.sleep(0.1)
        leaving = asyncio.ensure_future(Transient.acall("q1", {"op": "exit"}))
        await asyncio.sleep(0.1)
        queued = asyncio.ensure_future(Transient.acall("q1", {"op": "where"}))  # behind the exit in the mailbox
        await asyncio.gather(busy, leaving)
        with pytest.raises(ProcessNotRunning):
            await queued

    asyncio.run(go())
    assert Process.objects.get(process_id="q1", label=Transient.label).status == ProcessStatus.STOPPED


def test_a_call_sent_while_an_exit_is_written_starts_the_process_again(embedded, monkeypatch):
    """Only what was queued before the end learns the end; a call sent after it starts the process again."""
    import threading
    import time

    from processhub import store

    Transient.call("x1", {})
    writing = threading.Event()
    finish = store.finish

    def slow_finish(*args, **kwargs):
        writing.set()
        time.sleep(0.5)  # the exit's final write in progress: the window a caller's next message can land in
        return finish(*args, **kwargs)

    monkeypatch.setattr(store, "finish", slow_finish)
    leaving = threading.Thread(target=Transient.call, args=("x1", {"op": "exit"}))
    leaving.start()
    assert writing.wait(5)
    again = Transient.call("x1", {})
    leaving.join(5)
    assert again["n"] == 1 and again["epoch"] > 1, "a new instance answered"


def test_a_plain_def_callback_queued_for_a_thread_does_not_start_after_the_lease_ended(embedded, monkeypatch):
    """Every worker thread busy with a blocking handler: a callback waits in the pool's queue. If the lease ends
    meanwhile, it must not start when a thread frees up (it would be user code acting after the lease)."""
    from processhub.runtime import get_runtime
    from tests.hubtest.processes import GATES, Gate, GatedSync

    workers = get_runtime().handler_pool._max_workers
    holders = [f"hold{i}" for i in range(workers)]
    for pid in [*holders, "queued"]:
        GATES[pid] = Gate()
        GatedSync.start(pid)
    try:
        for pid in holders:
            GatedSync.cast(pid, "hold")
        for pid in holders:
            assert GATES[pid].entered.wait(5), f"{pid} holds a worker thread"
        GatedSync.cast("queued", "mark")  # handed to the pool, which has no free thread
        queued = embedded.node.activations[(GatedSync.label, "queued")]
        wait_for(lambda: queued.threads == 1, 5, "the callback to wait in the pool's queue")
        assert not GATES["queued"].done.is_set()
        monkeypatch.setattr(embedded.node.lease, "valid", lambda: False)  # the lease ends while it waits
        for pid in holders:
            GATES[pid].go.set()
        time.sleep(0.5)  # a callback that started would have marked by now: absence cannot be polled for
        assert not GATES["queued"].done.is_set(), "a callback started in a thread after its node's lease ended"
    finally:
        monkeypatch.undo()
        for gate in GATES.values():
            gate.go.set()
        GATES.clear()
