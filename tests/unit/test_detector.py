"""The chaos verdict's own logic on hand-made event tables: lateness by the database's lease, allowances,
compaction, twins (tests/chaos/recording.py). No Django, no services."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.chaos.recording import (
    Allow,
    Judge,
    Twin,
    clear_lost,
    compact,
    judge,
    lease_ends_from_rows,
    lost_events,
    note_lost,
    twins,
)

OLD, NEW, OTHER = "nid-old", "nid-new", "nid-other"
# Incarnation -> lease end (database clock). The old one stopped renewing at 10.0.
ENDS = {OLD: 10.0, NEW: 100.0, OTHER: 100.0}
RACE = "plain def handler step racing the node's exit after SIGCONT"


def ev(kind, t, *, pid="p", epoch=1, node="a", nid=OLD, inst="i1", cb=None, **extra):
    cb = cb or {"start": "init", "stop": "terminate", "tick": "handle_info"}[kind]
    return {"pid": pid, "epoch": epoch, "node": node, "nid": nid, "inst": inst, "kind": kind, "cb": cb, "t": t,
            **extra}


def takeover(t, epoch=2, node="b", nid=OTHER, inst="i2"):
    """The new activation on another node, starting at ``t`` and ticking after."""
    return [ev("start", t, epoch=epoch, node=node, nid=nid, inst=inst),
            ev("tick", t + 1, epoch=epoch, node=node, nid=nid, inst=inst)]


BEFORE = [ev("start", 1.0), ev("tick", 5.0)]

# name: (events, allowances, expected failures (only the non-zero ones), allowed count)
CASES = {
    "clean failover: old acts inside its lease, new starts after it": (
        BEFORE + [ev("tick", 9.9)] + takeover(11.0), (), {}, 0),
    "an event exactly at the lease end is inside it": (
        BEFORE + [ev("tick", 10.0)] + takeover(10.0), (), {}, 0),
    "paused plain def handler: its steps after the lease ended are late": (
        BEFORE + takeover(11.0) + [ev("tick", 14.0, cb="block", step=1), ev("tick", 14.05, cb="block", step=2)],
        (), {"late": 2}, 0),
    "terminate('lease lost') after the lease ended is late": (
        BEFORE + takeover(11.0) + [ev("stop", 14.0, reason="lease lost")], (), {"late": 1}, 0),
    "a late start fails and is a late start": (
        [ev("start", 10.5)], (), {"late": 1}, 0),
    "late even when nobody took over yet": (
        BEFORE + [ev("tick", 10.2)], (), {"late": 1}, 0),
    "the named race allowance covers a step within 100 ms after SIGCONT": (
        BEFORE + takeover(11.0) + [ev("tick", 14.05, cb="block")],
        (Allow(OLD, after=14.0, within=0.1, reason=RACE, callbacks=("block",)),), {}, 1),
    "the allowance may name the node instead of the incarnation": (
        BEFORE + takeover(11.0) + [ev("tick", 14.05, cb="block")],
        (Allow("a", after=14.0, within=0.1, reason=RACE),), {}, 1),
    "a step 150 ms after SIGCONT is outside the allowance": (
        BEFORE + takeover(11.0) + [ev("tick", 14.05, cb="block"), ev("tick", 14.15, cb="block")],
        (Allow(OLD, after=14.0, within=0.1, reason=RACE, callbacks=("block",)),), {"late": 1}, 1),
    "a step before SIGCONT is outside the allowance": (
        BEFORE + takeover(11.0) + [ev("tick", 13.9, cb="block")],
        (Allow(OLD, after=14.0, within=0.1, reason=RACE),), {"late": 1}, 0),
    "an allowance for another incarnation covers nothing here": (
        BEFORE + takeover(11.0) + [ev("tick", 14.05, cb="block")],
        (Allow(NEW, after=14.0, within=0.1, reason=RACE),), {"late": 1}, 0),
    "an allowance for block steps does not cover a late terminate": (
        BEFORE + takeover(11.0) + [ev("stop", 14.05, reason="lease lost")],
        (Allow(OLD, after=14.0, within=0.1, reason=RACE, callbacks=("block",)),), {"late": 1}, 0),
    "a takeover before the lease ended is an overlap (I1), never excused as late": (
        BEFORE + [ev("tick", 9.5)] + takeover(9.0), (), {"overlaps": 1}, 0),
    "same node, new incarnation: the old epoch's handler still acting is late (I10)": (
        BEFORE + takeover(12.0, node="a", nid=NEW) + [ev("tick", 13.0, cb="block")], (), {"late": 1}, 0),
    "an incarnation the database does not know is unjudged, and fails": (
        [ev("start", 1.0, nid="nid-ghost")], (), {"unjudged": 1}, 0),
    "an event without an incarnation is unjudged, and fails": (
        [{k: v for k, v in ev("start", 1.0).items() if k != "nid"}], (), {"unjudged": 1}, 0),
    "two instances of one (id, epoch) alive together are twins": (
        [ev("start", 1.0, inst="x"), ev("tick", 4.0, inst="x"), ev("start", 2.0, inst="y", node="b", nid=OTHER),
         ev("tick", 3.0, inst="y", node="b", nid=OTHER)], (), {"twins": 1, "split_epochs": 1}, 0),
    "two instances on ONE node, same epoch, alive together are twins": (
        [ev("start", 1.0, inst="x"), ev("tick", 4.0, inst="x"), ev("start", 2.0, inst="y"),
         ev("tick", 3.0, inst="y")], (), {"twins": 1}, 0),
    "one instance after the other (same epoch) is no twin": (
        [ev("start", 1.0, inst="x"), ev("stop", 2.0, inst="x"), ev("start", 3.0, inst="y")], (), {}, 0),
    "backwards epoch": (
        [ev("start", 1.0, epoch=5), ev("stop", 2.0, epoch=5), ev("start", 3.0, epoch=4, inst="i2")], (),
        {"backwards": 1, "overlaps": 1}, 0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_judge_table(name):
    events, allow, failing, allowed = CASES[name]
    verdict = judge(events, ENDS, margin=1.0, allow=allow)
    got = {k: v for k, v in verdict.failures().items() if v}
    assert got == failing, verdict.summary()
    assert len(verdict.allowed) == allowed, verdict.summary()
    assert verdict.ok is (not failing)
    assert verdict.summary().startswith("VERDICT OK" if not failing else "VERDICT FAIL")


def test_late_actions_say_how_late_and_which_callback():
    events = BEFORE + takeover(11.0) + [ev("tick", 14.25, cb="block", step=7), ev("start", 12.0)]
    verdict = judge(events, ENDS)
    assert [(e["cb"], round(e["late_by"], 3)) for e in verdict.late] == [("init", 2.0), ("block", 4.25)]
    assert [e["cb"] for e in verdict.late_starts] == ["init"]
    summary = verdict.summary()
    assert "late tick/block" in summary and "4.250s after its lease ended" in summary and "step=7" in summary


def test_the_safety_margin_is_counted_never_failed():
    events = [ev("start", 1.0), ev("tick", 8.9), ev("tick", 9.1), ev("stop", 10.0, reason="lease lost")]
    verdict = judge(events, ENDS, margin=1.0)
    assert verdict.ok and verdict.in_margin == 2, verdict.summary()
    assert judge(events, ENDS, margin=0.0).in_margin == 0


def test_lost_events_fail_the_verdict():
    verdict = judge(BEFORE, ENDS, unrecorded=[{**ev("tick", 6.0), "error": "ConnectionError()"}])
    assert not verdict.ok and verdict.failures()["unrecorded"] == 1
    assert "ConnectionError" in verdict.summary()


def test_a_lost_event_is_kept_per_list_and_read_back(monkeypatch, tmp_path):
    monkeypatch.setenv("CHAOS_LOST_DIR", str(tmp_path))
    note_lost("chaos:events:one", ev("tick", 6.0), ConnectionError("redis down"))
    note_lost("chaos:events:other", ev("tick", 7.0), "cancelled")
    (lost,) = lost_events("chaos:events:one")
    assert lost["t"] == 6.0 and "redis down" in lost["error"]
    assert not judge(BEFORE, ENDS, unrecorded=lost_events("chaos:events:one")).ok
    clear_lost("chaos:events:one")
    assert lost_events("chaos:events:one") == [] and len(lost_events("chaos:events:other")) == 1


def test_expected_ids_without_a_recent_in_lease_event_are_lost():
    events = BEFORE + takeover(11.0, inst="i2") + [ev("tick", 30.0, pid="q", nid=NEW)]
    verdict = judge(events, ENDS, expected=["p", "q", "r"], alive_since=20.0)
    assert verdict.report.lost == ["p", "r"]
    # A late action does not count as alive: p's only recent event is a zombie's.
    verdict = judge([*events, ev("tick", 25.0, cb="block")], ENDS, expected=["p", "q"], alive_since=20.0)
    assert verdict.report.lost == ["p"] and len(verdict.late) == 1


def test_an_allowance_must_name_its_reason():
    with pytest.raises(ValueError):
        Allow(OLD, after=1.0, reason=" ")


# ---------------------------------------------------------------- lease ends from the node rows


@pytest.mark.parametrize("rows,ends", [
    # renewing normally: lease_expires_at == heartbeat_at + TTL
    ([("n", 15.0, 10.0)], {"n": 15.0}),
    # drained or fenced on time: marked down before heartbeat_at + TTL
    ([("n", 12.0, 10.0)], {"n": 12.0}),
    # woke from a pause and marked itself down afterwards: the lease had ended at heartbeat_at + TTL
    ([("n", 40.0, 10.0)], {"n": 15.0}),
    # no heartbeat recorded: the stored end is all there is
    ([("n", 12.0, None)], {"n": 12.0}),
    ([("a", 15.0, 10.0), ("b", 99.0, 1.0)], {"a": 15.0, "b": 6.0}),
])
def test_lease_ends_from_rows(rows, ends):
    assert lease_ends_from_rows(rows, ttl=5.0) == ends


# ---------------------------------------------------------------- compaction and twins


def test_compact_keeps_first_and_last_per_instance_and_marks_a_stop():
    events = [ev("start", 1.0), ev("tick", 2.0), ev("stop", 3.0), ev("tick", 4.0),  # a tick after the stop
              ev("tick", 2.5, inst="i9"), ev("start", 5.0, epoch=2, node="b", nid=OTHER, inst="i2")]
    kept = compact(events)
    assert sorted((e["inst"], e["t"], e["kind"]) for e in kept) == [
        ("i1", 1.0, "start"), ("i1", 4.0, "stop"), ("i2", 5.0, "start"), ("i9", 2.5, "tick")]


def test_twins_reports_every_pair_of_overlapping_instances():
    events = [ev("start", 0.0, inst="a"), ev("tick", 10.0, inst="a"),
              ev("start", 1.0, inst="b"), ev("tick", 2.0, inst="b"),
              ev("start", 3.0, inst="c"), ev("tick", 4.0, inst="c")]
    assert twins(events) == [Twin("p", 1, ("a", "a"), 1.0), Twin("p", 1, ("a", "a"), 1.0)]


_event = st.builds(
    lambda kind, t, epoch, node, inst, cb: ev(kind, float(t), epoch=epoch, node=node,
                                               nid={"a": OLD, "b": OTHER, "c": NEW}[node], inst=inst, cb=cb),
    kind=st.sampled_from(["start", "tick", "stop"]), t=st.integers(0, 20), epoch=st.integers(1, 3),
    node=st.sampled_from(["a", "b", "c"]), inst=st.sampled_from(["x", "y"]),
    cb=st.sampled_from(["init", "handle_info", "block", "terminate"]))


@settings(max_examples=200, deadline=None)
@given(st.lists(_event, max_size=30), st.integers(1, 10))
def test_judging_in_batches_equals_judging_everything(events, size):
    ends = {OLD: 10.0, OTHER: 15.0, NEW: 100.0}
    allow = (Allow(OLD, after=12.0, within=2.0, reason=RACE, callbacks=("block",)),)
    whole = judge(events, ends, margin=2.0, allow=allow, expected=["p"], alive_since=5.0)
    fed = Judge(ends, 2.0, allow)
    for i in range(0, len(events), size):
        fed.feed(events[i:i + size])
    batched = fed.verdict(expected=["p"], alive_since=5.0)
    assert whole.failures() == batched.failures()
    # (which node is named for an activation's first event may differ on equal times, nothing else)
    assert sorted((o.pid, o.epoch_a, o.epoch_b, o.overlap_seconds) for o in whole.report.overlaps) == sorted(
        (o.pid, o.epoch_a, o.epoch_b, o.overlap_seconds) for o in batched.report.overlaps)
    assert sorted((b.pid, b.epoch_old, b.epoch_new) for b in whole.report.backwards) == sorted(
        (b.pid, b.epoch_old, b.epoch_new) for b in batched.report.backwards)
    assert whole.report.activations == batched.report.activations
    assert sorted((t.pid, t.epoch, t.overlap_seconds) for t in whole.twins) == sorted(
        (t.pid, t.epoch, t.overlap_seconds) for t in batched.twins)
    assert (whole.in_margin, whole.events, len(whole.allowed)) == (batched.in_margin, batched.events,
                                                                    len(batched.allowed))
