"""The node's pure decisions as tables: restart policy, start case, own-rows diff, orphans, fencing, leases."""
import pytest

from processhub.node import decisions as d
from processhub.node.clock import FakeClock
from processhub.node.lease import Lease, watchdog_step
from processhub.node.writes import WriteTracker

R, S, F = d.ExitAction.RESTART, d.ExitAction.STOP, d.ExitAction.FAIL


@pytest.mark.parametrize("policy, crashed, recent, expected", [
    ("permanent", True, [], R),
    ("permanent", False, [], R),
    ("permanent", True, [9.0, 9.5, 9.9], F),  # 3 restarts in 5 s already
    ("permanent", True, [1.0, 2.0, 9.9], R),  # old ones fell out of the window
    ("transient", True, [], R),
    ("transient", False, [], S),
    ("transient", True, [8.0, 9.0, 9.9], F),
    ("temporary", True, [], S),
    ("temporary", False, [], S),
])
def test_after_exit(policy, crashed, recent, expected):
    assert d.after_exit(policy, crashed, recent, 10.0, 3, 5.0) is expected


@pytest.mark.parametrize("n, delay", [(0, 0.0), (1, 0.1), (2, 0.2), (3, 0.4), (10, 2.0)])
def test_restart_backoff(n, delay):
    assert d.restart_delay(n) == pytest.approx(delay)


def row(status="running", node_id="me", alive=True):
    return d.RowState(status, node_id, alive)


@pytest.mark.parametrize("state, running_here, expected", [
    (None, False, d.StartCase.RETRY),  # vanished between the insert and the read
    (row(), True, d.StartCase.HERE),  # runs here: join it
    (row(), False, d.StartCase.ACTIVATE),  # names us, nothing runs it yet (a move, a rejoin)
    (row(node_id="other"), False, d.StartCase.ELSEWHERE),  # a live owner elsewhere: redirect
    (row(node_id="other", alive=False), False, d.StartCase.TAKE_OVER),  # dead owner
    (row(node_id=None, alive=False), False, d.StartCase.TAKE_OVER),  # no owner (left by the last node)
    (row(status="stopped", node_id=None, alive=False), False, d.StartCase.RESTART),
    (row(status="failed", node_id=None, alive=False), False, d.StartCase.RESTART),
])
def test_start_case(state, running_here, expected):
    assert d.start_case(state, "me", running_here) is expected


@pytest.mark.parametrize("rows, read_at, running, busy, activate, kill", [
    ({}, 10, {}, [], [], []),
    ({"a": 1}, 10, {"a": (1, 5)}, [], [], []),
    ({"a": 2}, 10, {}, [], ["a"], []),  # moved to us, not running yet
    ({}, 10, {"a": (1, 5)}, [], [], ["a"]),  # no longer ours
    ({"a": 3}, 10, {"a": (2, 5)}, [], [], ["a"]),  # epoch moved on under us
    ({"a": 2}, 10, {}, ["a"], [], []),  # being claimed right now
    ({}, 10, {"a": (1, 5)}, ["a"], [], []),  # being moved right now
    # Activated after the read began (a move that committed after it): the read cannot judge it.
    ({}, 10, {"a": (7, 11)}, [], [], []),
    ({"a": 6}, 10, {"a": (7, 12)}, [], [], []),
    ({}, 10, {"a": (7, 10)}, [], [], []),  # the same point counts as after
])
def test_diff_own(rows, read_at, running, busy, activate, kill):
    diff = d.diff_own(rows, read_at, running, busy)
    assert (sorted(diff.activate), sorted(diff.kill)) == (activate, kill)


@pytest.mark.parametrize("restart, winner, expected", [
    ("permanent", "me", d.OrphanAction.CLAIM),
    ("transient", "me", d.OrphanAction.CLAIM),
    ("temporary", "me", d.OrphanAction.STOP),
    ("permanent", "other", d.OrphanAction.LEAVE),
    ("temporary", "other", d.OrphanAction.LEAVE),
    ("permanent", None, d.OrphanAction.UNRUNNABLE),  # no live node has the class
])
def test_orphan_action(restart, winner, expected):
    assert d.orphan_action(restart, winner, "me") is expected


@pytest.mark.parametrize("now, stuck, may_exit, budget, exit_now", [
    (100.0, False, True, 2.0, False),  # noticed in the margin: terminate may run until the hard deadline
    (100.0, True, True, 2.0, False),  # user code may still return in time
    (102.0, False, True, 0.0, False),  # past it: no terminate at all
    (105.0, True, True, 0.0, True),  # past it with code it cannot stop: end the OS process
    (105.0, True, False, 0.0, False),  # the embedded node waits instead
])
def test_fence_plan(now, stuck, may_exit, budget, exit_now):
    assert d.fence_plan(now, 102.0, stuck, may_exit) == d.FencePlan(budget, exit_now)


def test_lease_from_renewals():
    lease = Lease.renewed_at(100.0, ttl=5.0, margin=1.0)
    assert (lease.soft, lease.hard) == (104.0, 105.0)
    assert lease.valid(103.9) and not lease.valid(104.0)
    late_answer = Lease.renewed_at(99.0, 5.0, 1.0)  # an older renewal answered last never shortens it
    assert lease.extended(late_answer) == lease


@pytest.mark.parametrize("now, fenced, expected", [
    (100.0, False, 0.5),  # plenty left: look again after the poll interval
    (103.8, False, pytest.approx(0.2)),  # wake exactly at the soft deadline
    (104.0, False, None),  # at it: fence
    (200.0, False, None),  # woke from a freeze far past it: fence at once
    (200.0, True, 0.05),  # already fenced: idle
])
def test_watchdog_step(now, fenced, expected):
    assert watchdog_step(now, Lease.renewed_at(100.0, 5.0, 1.0), fenced) == expected


def test_fake_clock():
    clock = FakeClock(10.0)
    clock.advance(2.5)
    assert clock.now() == 12.5


def test_write_tracker_answers_from_flight_and_history():
    w = WriteTracker(history=3)
    a, b = ("x", "a"), ("x", "b")
    with w.reading() as read_at:
        assert w.written_since(read_at) == set()
        token = w.begin([a])
        assert w.written_since(read_at) == {a}  # in flight
        w.end(token)
        assert w.written_since(read_at) == {a}  # finished after the read began
        with w.reading() as later:
            assert w.written_since(later) == set()
            unknown = w.begin(None)
            assert w.written_since(later) is None  # a write that may touch anything
            w.end(unknown)
        for _ in range(4):
            w.end(w.begin([b]))
        assert w.written_since(read_at) is None  # older than the history kept
        assert w.size() <= 3


def test_write_tracker_stays_bounded():
    w = WriteTracker(history=100)
    with w.reading():
        for i in range(10_000):
            w.end(w.begin([("x", str(i))]))
        assert w.size() == 100
    assert w.size() == 0  # no read in flight: nothing kept
    with w.reading() as point:
        assert w.written_since(point) == set()


def test_write_tracker_forgets_what_no_read_in_flight_can_ask_about():
    w = WriteTracker()
    a, b = ("x", "a"), ("x", "b")
    with w.reading() as first:
        w.end(w.begin([a]))
        with w.reading() as second:
            w.end(w.begin([b]))
        assert w.written_since(first) == {a, b}  # the second read's end keeps what the first may ask
    assert w.size() == 0  # both ended: the keys are gone (their memory with them)
    assert w.written_since(first) is None  # a read that ended gets "unknown", never a wrong "nothing"
    assert w.written_since(second) is None
    w.end(w.begin([a]))
    assert w.size() == 0
