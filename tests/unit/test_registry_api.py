"""The registry as an API, on the embedded node: tags and metadata, start_many with rollback, queries,
declared singletons, operations, call(start=False), and the registered/unregistered signals."""
from __future__ import annotations

import threading

import pytest

from processhub import hub, signals
from processhub.exceptions import InvalidArgument, NoLiveNodes, ProcessNotRunning, StartManyFailed
from processhub.models import Process, ProcessStatus
from tests.cluster.harness import wait_for
from tests.edgeapp.processes import Scheduler, Tagger
from tests.hubtest.processes import Echo, Sink


def test_tags_and_metadata_are_stored_survive_restarts_and_are_queryable(embedded):
    ref = Tagger.start("t1", tags=["org:7", "room"], metadata={"plan": "pro"})
    assert ref.tags == ("org:7", "room") and ref.metadata == {"plan": "pro"}
    row = Process.objects.get(label=Tagger.label, process_id="t1")
    assert row.tags == ["org:7", "room"] and row.metadata == {"plan": "pro"}
    assert Tagger.call("t1", {"op": "show"}) == {"tags": ["org:7", "room"], "metadata": {"plan": "pro"}}
    # Inside the process: update, persisted, visible to queries at once.
    Tagger.call("t1", {"op": "retag", "tags": ["org:8"], "metadata": {"plan": "free"}})
    assert [r.process_id for r in hub.process_list(tag="org:8")] == ["t1"]
    assert list(hub.process_list(tag="org:7")) == []
    # A crash restarts it in place: tags and metadata stay.
    with pytest.raises(Exception, match="boom"):
        Tagger.call("t1", {"op": "crash"})
    assert Tagger.call("t1", {"op": "show"}) == {"tags": ["org:8"], "metadata": {"plan": "free"}}
    # A start of a running process changes nothing; a restart of a stopped one may set them anew.
    assert Tagger.start("t1", tags=["other"]).tags == ("org:8",)
    Tagger.stop("t1")
    assert Tagger.start("t1", tags=["again"]).tags == ("again",)


def test_process_list_filters_statuses_nodes_and_pages(embedded):
    for i in range(25):
        Echo.start(f"pl{i:02d}", tags=["even"] if i % 2 == 0 else ["odd"])
    Echo.stop("pl00")
    running = list(hub.process_list(label=Echo.label))
    assert len(running) == 24 and all(r.status == "running" and r.node == "embedded" for r in running)
    assert [r.process_id for r in hub.process_list(label=Echo.label, status="stopped")] == ["pl00"]
    assert len(list(hub.process_list(label=Echo.label, status=None))) == 25
    assert len(list(hub.match_tag("even"))) == 12
    assert len(list(Echo.list(tag="odd"))) == 12
    assert len(list(hub.process_list(node="embedded", label=Echo.label))) == 24
    assert list(hub.process_list(node="no-such-node")) == []
    first = hub.process_list(label=Echo.label).page(limit=10)
    second = hub.process_list(label=Echo.label).page(limit=10, after=first[-1])
    assert [r.process_id for r in first + second] == [f"pl{i:02d}" for i in range(1, 21)]
    assert {r.process_id for r in hub.process_list(local=True, label=Echo.label)} == {r.process_id for r in running}
    with pytest.raises(InvalidArgument):
        hub.process_list(status="zombie")


def test_start_many_continue_and_rollback(embedded):
    result = Sink.start_many([{"id": f"m{i}"} for i in range(50)], tags=["batch"])
    assert len(result.refs) == 50 and not result.errors and all(r.created for r in result.refs.values())
    again = Sink.start_many([{"id": "m0"}, {"id": "fresh"}])
    assert not again.refs["m0"].created and again.refs["fresh"].created
    # One bad argument among many: "continue" starts the others and names the bad one.
    args = [{"id": f"c{i}"} for i in range(20)] + [{"no": "id"}]
    result = Sink.start_many(args)
    assert len(result.refs) == 20 and list(result.errors) == ["#20"]
    assert isinstance(result.errors["#20"], InvalidArgument)
    # "rollback": nothing this call created is left; what ran before stays.
    args = [{"id": f"r{i}"} for i in range(100)] + [{"id": "m1"}, {"id": "bad", "x": float("nan")}]
    with pytest.raises(StartManyFailed) as info:
        Sink.start_many(args, on_failure="rollback")
    assert set(info.value.errors) == {"bad"}
    assert not Process.objects.filter(label=Sink.label, process_id__startswith="r",
                                      status=ProcessStatus.RUNNING).exists()
    assert Sink.fetch({"id": "m1"}) is not None
    with pytest.raises(InvalidArgument, match="on_failure"):
        Sink.start_many([{"id": "x"}], on_failure="maybe")
    assert not Process.objects.filter(label=Sink.label, process_id="x").exists()
    assert sorted(Sink.stop_many([{"id": "m0"}, {"id": "m1"}, {"id": "never"}])) == ["m0", "m1"]


@pytest.mark.parametrize("kwargs, match", [
    ({"tags": "one-string"}, "tags must be"),
    ({"tags": [1, 2]}, "a tag must be"),
    ({"tags": ["x" * 101]}, "a tag must be"),
    ({"tags": [f"t{i}" for i in range(40)]}, "more than"),
    ({"metadata": ["not", "an", "object"]}, "metadata must be"),
    ({"metadata": {"big": "x" * 70_000}}, "MAX_MESSAGE_BYTES|bytes"),
    ({"node": "no-such-node"}, "no live node named"),
])
def test_bad_registry_input_is_named_and_changes_nothing(embedded, kwargs, match):
    with pytest.raises((InvalidArgument, NoLiveNodes), match=match):
        Echo.start("bad-input", **kwargs)
    assert not Process.objects.filter(process_id="bad-input").exists()


def test_call_with_start_false_reaches_only_running_processes(embedded):
    with pytest.raises(ProcessNotRunning):
        Echo.call("not-started", {}, start=False)
    with pytest.raises(ProcessNotRunning):
        Echo.cast("not-started", {}, start=False)
    assert not Process.objects.filter(process_id="not-started").exists()
    Echo.start("started")
    assert Echo.call("started", {}, start=False)["node"] == "embedded"
    Echo.stop("started")
    with pytest.raises(ProcessNotRunning):
        Echo.call("started", {}, start=False)  # stopped stays stopped


def test_operations_restart_move_and_health(embedded):
    first = Echo.start("op")
    again = Echo.restart("op")
    assert again.epoch > first.epoch and Echo.call("op", {})["n"] == 1  # a fresh init
    assert Echo.restart == "permanent"  # the policy string is still the policy
    assert Echo.move("op", "embedded") is False  # already there
    assert hub.is_alive() and not hub.is_partitioned()
    assert hub.is_alive("embedded") and not hub.is_alive("nobody")
    [state] = hub.nodes()
    assert (state.name, state.status, state.lease_valid) == ("embedded", "up", True) and state.processes >= 1


def test_declared_singletons_start_with_the_hub_and_come_back(embedded, monkeypatch):
    monkeypatch.setattr(Scheduler, "autostart", ["cron"])  # declared from now on (the node reads it each pass)
    wait_for(lambda: Scheduler.fetch("cron"), 10, "the declared scheduler to start")
    Scheduler.stop("cron")
    wait_for(lambda: Scheduler.fetch("cron"), 10, "reconcile to start it again (it is still declared)")


def test_registered_and_unregistered_signals(embedded):
    seen: list[tuple[str, str]] = []
    lock = threading.Lock()

    def on_registered(sender, process_id, **kw):
        with lock:
            seen.append(("registered", process_id))

    def on_unregistered(sender, process_id, reason, **kw):
        with lock:
            seen.append(("unregistered", process_id))

    signals.process_registered.connect(on_registered, weak=False)
    signals.process_unregistered.connect(on_unregistered, weak=False)
    try:
        Echo.start("sig")
        Echo.stop("sig")
        wait_for(lambda: ("unregistered", "sig") in seen, 5, "both signals")
        assert seen.index(("registered", "sig")) < seen.index(("unregistered", "sig"))
    finally:
        signals.process_registered.disconnect(on_registered)
        signals.process_unregistered.disconnect(on_unregistered)


def test_signals_of_many_processes_come_in_batches_and_each_fires_once(embedded):
    """A node sends the registered events of one loop turn as one batch event; receivers still get one signal
    per process, each exactly once."""
    ids = [f"batch{i:03d}" for i in range(120)]
    registered: list[str] = []
    unregistered: list[str] = []
    lock = threading.Lock()

    def on_registered(sender, process_id, **kw):
        with lock:
            registered.append(process_id)

    def on_unregistered(sender, process_id, reason, **kw):
        with lock:
            unregistered.append(process_id)

    signals.process_registered.connect(on_registered, weak=False)
    signals.process_unregistered.connect(on_unregistered, weak=False)
    try:
        assert not Echo.start_many(ids).errors
        wait_for(lambda: set(ids) <= set(registered), 5, "a registered signal for every process")
        Echo.stop_many(ids)
        wait_for(lambda: set(ids) <= set(unregistered), 5, "an unregistered signal for every process")
        mine = [p for p in registered if p in set(ids)]
        assert sorted(mine) == sorted(ids), "a process signalled twice"
    finally:
        signals.process_registered.disconnect(on_registered)
        signals.process_unregistered.disconnect(on_unregistered)
