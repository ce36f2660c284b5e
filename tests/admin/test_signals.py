"""Lifecycle signals, sent by an embedded node (and a second node in the same runtime for moves and drains)."""
import asyncio
import logging
import threading

import pytest

from processhub import signals
from processhub.exceptions import ProcessCrashed
from processhub.models import Process
from processhub.node import Node
from tests.cluster.harness import wait_for
from tests.hubtest.processes import Echo, Transient

ALL = ["process_started", "process_stopped", "process_crashed", "process_restarted", "process_moved", "node_up",
       "node_draining", "node_down"]


class Recorder:
    """Collects every signal (they arrive on the runtime's loop thread)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object, dict]] = []
        self.lock = threading.Lock()
        self.receivers = []
        for name in ALL:
            def receiver(sender, name=name, **kwargs):
                kwargs.pop("signal", None)
                with self.lock:
                    self.events.append((name, sender, kwargs))
            getattr(signals, name).connect(receiver, weak=False)
            self.receivers.append((getattr(signals, name), receiver))

    def disconnect(self) -> None:
        for signal, receiver in self.receivers:
            signal.disconnect(receiver)

    def of(self, name: str, **match) -> list[dict]:
        with self.lock:
            return [kw for n, _, kw in self.events if n == name and all(kw.get(k) == v for k, v in match.items())]


@pytest.fixture
def recorded():
    rec = Recorder()
    yield rec
    rec.disconnect()


def test_process_lifecycle_signals(embedded, recorded):
    node = embedded.node
    ref = Echo.start("sig")
    [started] = wait_for(lambda: recorded.of("process_started", process_id="sig"), 5, "process_started")
    assert started == {"label": Echo.label, "process_id": "sig", "node": node.name, "node_id": node.id, "epoch": 1}
    assert ref.epoch == 1
    with pytest.raises(ProcessCrashed):
        Echo.call("sig", {"op": "crash"})
    [crashed] = recorded.of("process_crashed", process_id="sig")
    assert "boom requested" in crashed["reason"] and crashed["epoch"] == 1
    [restarted] = wait_for(lambda: recorded.of("process_restarted", process_id="sig"), 5, "process_restarted")
    assert restarted["epoch"] == 2
    wait_for(lambda: recorded.of("process_started", process_id="sig", epoch=2), 5, "the second start")
    Transient.call("tr", {"op": "exit"})
    [exited] = wait_for(lambda: recorded.of("process_stopped", process_id="tr"), 5, "exit")
    assert exited["reason"] == "normal" and exited["label"] == Transient.label
    assert Echo.stop("sig")
    [stopped] = wait_for(lambda: recorded.of("process_stopped", process_id="sig"), 5, "stop")
    assert stopped["reason"] == "stopped" and stopped["epoch"] == 2
    # Senders are the classes, so receivers can filter on them.
    with recorded.lock:
        senders = {sender for name, sender, kw in recorded.events if kw.get("process_id") == "tr"}
    assert senders == {Transient}


def test_a_failing_receiver_does_not_stop_the_others(embedded, recorded, caplog):
    def broken(sender, **kwargs):
        raise RuntimeError("receiver bug")

    signals.process_started.connect(broken, weak=False)
    try:
        with caplog.at_level(logging.ERROR, logger="processhub.signals"):
            assert Echo.call("robust", {})["epoch"] == 1
            wait_for(lambda: recorded.of("process_started", process_id="robust"), 5, "the other receiver")
            wait_for(lambda: "receiver bug" in caplog.text, 5, "the receiver's error in the log")
    finally:
        signals.process_started.disconnect(broken)
    assert Echo.call("robust", {})["n"] == 2  # the process never noticed


def test_move_drain_and_node_signals(embedded, recorded):
    rt = embedded
    first = rt.node

    async def start_second():
        second = Node(rt, "second")
        await second.start()
        return second

    second = asyncio.run_coroutine_threadsafe(start_second(), rt.loop).result(10)
    rt.node = first  # reset_runtime drains rt.node; the second one is drained here
    try:
        [up] = recorded.of("node_up", node="second")
        assert up["node_id"] == second.id
        Echo.start("mover")
        wait_for(lambda: Echo.fetch("mover"), 5, "mover")
        src, dst = (first, second) if Echo.fetch("mover").node_id == first.id else (second, first)
        moved = rt.run_sync(rt.client.move(Echo.label, "mover", dst.name))
        assert moved
        [m] = wait_for(lambda: recorded.of("process_moved", process_id="mover"), 5, "process_moved")
        assert (m["node"], m["to_node"], m["new_epoch"]) == (src.name, dst.name, m["epoch"] + 1)
        stopped = recorded.of("process_stopped", process_id="mover")
        assert [s["reason"] for s in stopped] == ["moved"]
        wait_for(lambda: recorded.of("process_started", process_id="mover", node=dst.name), 5, "start on dst")
        # Drain the second node in place: a node_draining, then its processes move to the first.
        for i in range(6):
            Echo.start(f"dr{i}")
        expected = Process.objects.filter(node_id=second.id, status="running").count()
        assert expected > 0 and rt.run_sync(rt.client.drain("second")) == expected
        wait_for(lambda: recorded.of("node_draining", node="second"), 5, "node_draining")
        wait_for(lambda: not second.activations, 10, "second to hand everything off")
        assert all(m["to_node"] == first.name for m in recorded.of("process_moved", node="second"))
        assert second.lease_valid() and second.draining
    finally:
        asyncio.run_coroutine_threadsafe(second.drain(), rt.loop).result(20)
        second.close()
    [down] = wait_for(lambda: recorded.of("node_down", node="second"), 5, "node_down")
    assert down["reason"] == "shutdown" and down["node_id"] == second.id
