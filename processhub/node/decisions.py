"""Pure decisions of a node, as plain data in and out: tested as tables in tests/unit/test_node_decisions.py.

No Django, no I/O, no clock: every function takes the facts it needs (times
included) and returns what to do. The node's parts do the awaiting.
"""
from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from ..values import IDLE, RUNNING

# ---------------------------------------------------------------- restart policy


class ExitAction(enum.Enum):
    RESTART = "restart"  # run a new activation here, epoch + 1
    STOP = "stop"  # the row becomes stopped: not run again unless started
    FAIL = "fail"  # the row becomes failed: too many restarts


def after_exit(policy: str, crashed: bool, recent_restarts: Collection[float], now: float, max_restarts: int,
               max_seconds: float) -> ExitAction:
    """What to do when an activation ends (Erlang supervisor semantics).

    ``recent_restarts`` holds the times of earlier restarts of this process; a
    restart that would make more than ``max_restarts`` within ``max_seconds``
    fails the process instead. A failed ``init()`` on a takeover, restart or move
    is a crash too: it follows the same policy (DESIGN I9).
    """
    if policy == "temporary":
        return ExitAction.STOP
    if policy == "transient" and not crashed:
        return ExitAction.STOP
    window = [t for t in recent_restarts if now - t < max_seconds]
    if len(window) >= max_restarts:
        return ExitAction.FAIL
    return ExitAction.RESTART


# The first restart is immediate; each further one within the window waits twice as long, up to the cap.
RESTART_BACKOFF = 0.1
RESTART_BACKOFF_CAP = 2.0


def restart_delay(restarts_in_window: int) -> float:
    """Seconds to wait before restart number ``restarts_in_window + 1`` of the current window."""
    if restarts_in_window <= 0:
        return 0.0
    return min(RESTART_BACKOFF * 2 ** (restarts_in_window - 1), RESTART_BACKOFF_CAP)


# ---------------------------------------------------------------- starts


class StartCase(enum.Enum):
    RETRY = "retry"  # the row vanished between the insert and the read: decide again
    HERE = "here"  # the row names this node at the epoch it runs: join that activation
    ACTIVATE = "activate"  # the row names this node but nothing runs it here yet: run it
    ELSEWHERE = "elsewhere"  # it runs on another live node: answer with that node's ref
    TAKE_OVER = "take_over"  # its owner is dead or absent: claim it (epoch + 1), same argument
    REACTIVATE = "reactivate"  # it was passivated (idle): claim it with its argument and handed-off state
    RESTART = "restart"  # it was stopped or failed: claim it with the caller's argument (a fresh start)


@dataclass(frozen=True, slots=True)
class RowState:
    """What a start needs to know about an existing row."""

    status: str
    node_id: str | None
    owner_alive: bool


def start_case(row: RowState | None, me: str, running_here: bool) -> StartCase:
    """The start of a process whose row already exists (the INSERT found it): join, redirect, claim or retry."""
    if row is None:
        return StartCase.RETRY
    if row.status == IDLE:
        return StartCase.REACTIVATE
    if row.status != RUNNING:
        return StartCase.RESTART
    if row.node_id == me:
        return StartCase.HERE if running_here else StartCase.ACTIVATE
    if row.owner_alive:
        return StartCase.ELSEWHERE
    return StartCase.TAKE_OVER


# ---------------------------------------------------------------- own rows


@dataclass(frozen=True)
class OwnDiff:
    """How a node's activations differ from the rows that name it."""

    activate: list  # row keys named for this node that it does not run
    kill: list  # activation keys whose row no longer names this node at that epoch


def diff_own(rows: Mapping[tuple, int], read_at: int, running: Mapping[tuple, tuple[int, int]],
             busy: Collection[tuple] = ()) -> OwnDiff:
    """Compare {key: epoch} read from the database with {key: (epoch, since)} running here.

    ``read_at`` and every ``since`` are values of the node's one sequence counter
    (bumped by each activation and each registry write): an activation that began
    at or after the read was started is newer than what the read can show (a move
    that committed meanwhile), so the read cannot judge it. Keys in ``busy`` (being
    claimed, started, moved or written right now) are left alone too.
    """
    busy = set(busy)
    activate = [k for k in rows if k not in busy and k not in running]
    kill = [k for k, (epoch, since) in running.items()
            if k not in busy and since < read_at and rows.get(k) != epoch]
    return OwnDiff(activate, kill)


# ---------------------------------------------------------------- orphans


class OrphanAction(enum.Enum):
    CLAIM = "claim"  # the owner is dead and this node is the rendezvous winner: take it (epoch + 1)
    STOP = "stop"  # a temporary process dies with its node: mark it stopped
    LEAVE = "leave"  # another live node is the winner: its own reconcile takes it
    UNRUNNABLE = "unrunnable"  # no live node can run its class: nothing can be done until one joins


def orphan_action(restart: str, winner: str | None, me: str) -> OrphanAction:
    """For a running row whose owner is dead or absent: who does what (Horde's ``handoff_processes`` table).

    Only the rendezvous winner among the nodes that can run the class acts, so live
    nodes do not race for the same rows (the epoch-fenced claim stops a double
    claim anyway). The winner also stops temporary processes, so exactly one node
    writes each row.
    """
    if winner is None:
        return OrphanAction.UNRUNNABLE
    if winner != me:
        return OrphanAction.LEAVE
    return OrphanAction.STOP if restart == "temporary" else OrphanAction.CLAIM


# ---------------------------------------------------------------- fencing


@dataclass(frozen=True, slots=True)
class FencePlan:
    """How a node that lost its lease stops its activations."""

    terminate_budget: float  # seconds terminate("lease lost") may run; 0: do not call it at all
    exit_now: bool  # user code that cannot be stopped is running past the lease: end the OS process


def fence_plan(now: float, hard_deadline: float, stuck_user_code: bool, may_exit: bool) -> FencePlan:
    """What a fence may still do at ``now``.

    ``hard_deadline`` is the earliest moment the database may let another node take
    over (the last renewal's send time + NODE_TTL, on this node's clock). Before it,
    ``terminate("lease lost")`` may run for the time that is left; after it, nothing
    of this node's activations may run any more: terminate is skipped, and user code
    that cannot be cancelled (a plain ``def`` handler in a thread) would run beside
    the new owner, so a node that may exit ends its OS process (an Orleans silo
    declared dead does the same). ``stuck_user_code`` is that fact, at ``now``.
    """
    left = hard_deadline - now
    if left <= 0:
        return FencePlan(0.0, stuck_user_code and may_exit)
    return FencePlan(left, False)
