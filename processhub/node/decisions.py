"""Pure decisions of the supervisor: restart policy and reconciliation, as plain data in and out.

No Django, no I/O: tested as tables in tests/unit/test_decisions.py.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

RESTART, STOP, FAIL = "restart", "stop", "fail"


def after_exit(policy: str, crashed: bool, recent_restarts: list[float], now: float,
               max_restarts: int, max_seconds: float) -> str:
    """What to do when an activation ends (Erlang supervisor semantics).

    ``recent_restarts`` holds the times of earlier restarts of this process; a
    restart that would make more than ``max_restarts`` within ``max_seconds``
    fails the process instead.
    """
    if policy == "temporary":
        return STOP
    if policy == "transient" and not crashed:
        return STOP
    window = [t for t in recent_restarts if now - t < max_seconds]
    if len(window) >= max_restarts:
        return FAIL
    return RESTART


@dataclass(frozen=True)
class OwnDiff:
    """How a node's activations differ from the rows that name it."""

    activate: list  # row keys named for this node that it does not run
    kill: list  # activation keys whose row no longer names this node at that epoch


def diff_own(rows: Mapping[tuple, int], running: Mapping[tuple, int], busy: Iterable[tuple] = ()) -> OwnDiff:
    """Compare {key: epoch} from the database with {key: epoch} running here.

    Keys in ``busy`` (being claimed, started or moved right now) are left alone:
    their row and their activation are changing under our own hands.
    """
    busy = set(busy)
    activate = [k for k, ep in rows.items() if k not in busy and running.get(k) != ep and k not in running]
    kill = [k for k, ep in running.items() if k not in busy and rows.get(k) != ep]
    return OwnDiff(activate, kill)


def orphan_action(restart: str, winner_is_me: bool) -> str | None:
    """For a running row whose owner is dead or absent: who does what.

    Only the rendezvous winner acts, so live nodes do not race for the same
    rows (the epoch-fenced claim would still stop a double claim).
    """
    if not winner_is_me:
        return None
    return "stop" if restart == "temporary" else "claim"
