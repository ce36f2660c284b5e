"""Pure decisions as tables: placement, restart policy, reconcile diff, wire validation."""
import math

import pytest

from processhub import decisions, placement, wire
from processhub.exceptions import InvalidArgument, InvalidMessage


def test_rendezvous_is_deterministic_and_total():
    nodes = ["a", "b", "c"]
    assert placement.choose("x", nodes) == placement.choose("x", list(reversed(nodes)))
    assert placement.choose("x", []) is None
    counts = {n: 0 for n in nodes}
    for i in range(3000):
        counts[placement.choose(f"id{i}", nodes)] += 1
    assert all(800 < c < 1200 for c in counts.values()), counts


def test_rendezvous_moves_only_what_it_must():
    before = {f"id{i}": placement.choose(f"id{i}", ["a", "b", "c"]) for i in range(2000)}
    after = {k: placement.choose(k, ["a", "b", "c", "d"]) for k in before}
    moved = [k for k in before if before[k] != after[k]]
    assert all(after[k] == "d" for k in moved)  # a join only takes, never shuffles
    assert 0.15 < len(moved) / len(before) < 0.35
    gone = {k: placement.choose(k, ["a", "c"]) for k in before}
    assert all(gone[k] == before[k] for k in before if before[k] != "b")  # a leave moves only its own


@pytest.mark.parametrize(
    "policy, crashed, recent, expected",
    [
        ("permanent", True, [], decisions.RESTART),
        ("permanent", False, [], decisions.RESTART),
        ("permanent", True, [9.0, 9.5, 9.9], decisions.FAIL),  # 3 restarts in 5 s already
        ("permanent", True, [1.0, 2.0, 9.9], decisions.RESTART),  # old ones fell out of the window
        ("transient", True, [], decisions.RESTART),
        ("transient", False, [], decisions.STOP),
        ("transient", True, [8.0, 9.0, 9.9], decisions.FAIL),
        ("temporary", True, [], decisions.STOP),
        ("temporary", False, [], decisions.STOP),
    ],
)
def test_after_exit(policy, crashed, recent, expected):
    assert decisions.after_exit(policy, crashed, recent, 10.0, 3, 5.0) == expected


@pytest.mark.parametrize(
    "rows, running, busy, activate, kill",
    [
        ({}, {}, [], [], []),
        ({"a": 1}, {"a": 1}, [], [], []),
        ({"a": 2}, {}, [], ["a"], []),  # moved to us, not running yet
        ({}, {"a": 1}, [], [], ["a"]),  # no longer ours
        ({"a": 3}, {"a": 2}, [], [], ["a"]),  # epoch moved on under us
        ({"a": 2}, {}, ["a"], [], []),  # being claimed right now
        ({}, {"a": 1}, ["a"], [], []),  # being moved right now
    ],
)
def test_diff_own(rows, running, busy, activate, kill):
    d = decisions.diff_own(rows, running, busy)
    assert (sorted(d.activate), sorted(d.kill)) == (activate, kill)


@pytest.mark.parametrize("restart, me, expected", [
    ("permanent", True, "claim"), ("transient", True, "claim"), ("temporary", True, "stop"),
    ("permanent", False, None), ("temporary", False, None),
])
def test_orphan_action(restart, me, expected):
    assert decisions.orphan_action(restart, me) == expected


@pytest.mark.parametrize("value", [object(), {1, 2}, math.nan, math.inf, b"bytes", {"k": lambda: 1}])
def test_check_data_refuses_non_json(value):
    with pytest.raises(InvalidMessage):
        wire.check_data(value, "message", 1000)


def test_check_data_size_and_ok():
    wire.check_data({"a": [1, "x", None, True, 1.5]}, "m", 1000)
    with pytest.raises(InvalidMessage, match="MAX_MESSAGE_BYTES"):
        wire.check_data("x" * 2000, "m", 1000)


@pytest.mark.parametrize("pid", ["", "   ", "x" * 201, 7, None, "a\x00b"])
def test_bad_ids(pid):
    with pytest.raises(InvalidArgument):
        wire.check_process_id(pid, 200)


@pytest.mark.parametrize("data", [b"", b"[]", b"{}", b'{"t": 1}', b"\xff", b"null"])
def test_loads_refuses_malformed_envelopes(data):
    with pytest.raises(InvalidMessage):
        wire.loads(data)
