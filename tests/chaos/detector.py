"""Pure checker of the double-activation detector.

Test processes record events ``{"pid", "node", "epoch", "kind", "t"}`` where
``kind`` is ``"start" | "tick" | "stop"`` and ``t`` is a time in seconds on ONE
shared clock (e.g. the database clock).  The events of one activation are
keyed by ``(pid, epoch)``.  :func:`check` turns them into a :class:`Report`.

An activation's interval is ``[first, last]``: ``first`` is its earliest event
(its start, or its first tick if the start was not recorded), ``last`` its
latest event (its stop, or its last tick if there is no stop; a tick recorded
after the stop still counts, since the activation was evidently still running).

Findings:

* ``overlaps``  -- pairs of activations of one pid, epoch_a < epoch_b, where
  ``last_a > first_b`` (strictly: equal times are a clean handover).
  ``overlap_seconds = last_a - first_b``, i.e. how long the older epoch kept
  acting after the newer one had started.
* ``backwards`` -- pairs where the activation that started later (strictly
  greater first time) has the LOWER epoch.
* ``split_epochs`` -- one ``(pid, epoch)`` recorded by more than one node.
  (Not in the original brief, but the overlap check cannot see it, since both
  claimants share the key: it is a double activation with an equal epoch.)
* ``lost`` -- expected pids with no event at/after ``alive_since``.

Complexity: O(n log n + k) for n events and k reported pairs (the pair
searches use an output-sensitive walk of a binary heap).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = [
    "Activation",
    "Backwards",
    "Overlap",
    "Report",
    "SplitEpoch",
    "activations",
    "check",
]

KINDS = frozenset({"start", "tick", "stop"})


class Activation(NamedTuple):
    pid: str
    epoch: int
    node: str  # the node of its first event
    first: float
    last: float
    nodes: tuple[str, ...]  # every node that recorded this (pid, epoch), sorted
    stopped: bool


class Overlap(NamedTuple):
    pid: str
    epoch_a: int  # older (lower) epoch
    node_a: str
    epoch_b: int  # newer (higher) epoch
    node_b: str
    overlap_seconds: float  # last_a - first_b (> tolerance)


class Backwards(NamedTuple):
    pid: str
    epoch_old: int  # epoch of the activation that started first ...
    node_old: str
    first_old: float
    epoch_new: int  # ... is higher than that of the one that started later
    node_new: str
    first_new: float


class SplitEpoch(NamedTuple):
    pid: str
    epoch: int
    nodes: tuple[str, ...]


@dataclass
class Report:
    activations: int = 0
    overlaps: list[Overlap] = field(default_factory=list)
    backwards: list[Backwards] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    split_epochs: list[SplitEpoch] = field(default_factory=list)
    events: int = 0
    pids: int = 0

    @property
    def ok(self) -> bool:
        return not (self.overlaps or self.backwards or self.lost or self.split_epochs)

    def summary(self, limit: int = 10) -> str:
        head = (
            f"{'OK' if self.ok else 'FAIL'}: {self.events} events, "
            f"{self.activations} activations of {self.pids} pids; "
            f"{len(self.overlaps)} overlaps, {len(self.backwards)} backwards, "
            f"{len(self.split_epochs)} split epochs, {len(self.lost)} lost"
        )
        lines = [head]

        def section(title: str, items: list, fmt) -> None:
            if not items:
                return
            lines.append(f"{title}:")
            lines.extend("  " + fmt(x) for x in items[:limit])
            if len(items) > limit:
                lines.append(f"  ... and {len(items) - limit} more")

        section(
            "overlaps",
            sorted(self.overlaps, key=lambda o: -o.overlap_seconds),
            lambda o: (
                f"pid={o.pid} epoch {o.epoch_a}@{o.node_a} still active "
                f"{o.overlap_seconds:.3f}s after epoch {o.epoch_b}@{o.node_b} started"
            ),
        )
        section(
            "backwards",
            self.backwards,
            lambda b: (
                f"pid={b.pid} epoch {b.epoch_new}@{b.node_new} started at {b.first_new:.3f} "
                f"after higher epoch {b.epoch_old}@{b.node_old} (started {b.first_old:.3f})"
            ),
        )
        section(
            "split epochs",
            self.split_epochs,
            lambda s: f"pid={s.pid} epoch {s.epoch} claimed by nodes {', '.join(s.nodes)}",
        )
        section("lost", self.lost, lambda p: f"pid={p}")
        return "\n".join(lines)


def _validate(ev: Mapping[str, Any], i: int) -> tuple[str, str, int, str, float]:
    try:
        pid, node, epoch, kind, t = ev["pid"], ev["node"], ev["epoch"], ev["kind"], ev["t"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"event #{i} {ev!r}: missing field {e}") from None
    if kind not in KINDS:
        raise ValueError(f"event #{i} {ev!r}: kind must be one of {sorted(KINDS)}")
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        raise ValueError(f"event #{i} {ev!r}: epoch must be an int")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise ValueError(f"event #{i} {ev!r}: t must be a finite number")
    return str(pid), str(node), epoch, kind, float(t)


def activations(events: Iterable[Mapping[str, Any]]) -> list[Activation]:
    """Fold events into activations, sorted by (pid, epoch).  O(n log n)."""
    acc: dict[tuple[str, int], list] = {}
    for i, ev in enumerate(events):
        pid, node, epoch, kind, t = _validate(ev, i)
        a = acc.get((pid, epoch))
        if a is None:
            # [first, first_node, last, nodes, stopped]
            acc[(pid, epoch)] = [t, node, t, {node}, kind == "stop"]
            continue
        if t < a[0]:
            a[0], a[1] = t, node
        if t > a[2]:
            a[2] = t
        a[3].add(node)
        if kind == "stop":
            a[4] = True
    return [
        Activation(pid, epoch, a[1], a[0], a[2], tuple(sorted(a[3])), a[4]) for (pid, epoch), a in sorted(acc.items())
    ]


def _heap_greater(heap: list[tuple], bound: float) -> Iterable[tuple]:
    """Yield every item of a min-heap of ``(-key, ...)`` with ``key > bound``.

    Walks only the nodes that qualify plus their direct children, so it costs
    O(1 + output) rather than O(len(heap)).
    """
    stack = [0] if heap else []
    n = len(heap)
    while stack:
        i = stack.pop()
        item = heap[i]
        if -item[0] > bound:
            yield item
            for j in (2 * i + 1, 2 * i + 2):
                if j < n:
                    stack.append(j)


def check(
    events: Iterable[Mapping[str, Any]],
    expected_pids: Iterable[str] | None = None,
    alive_since: float | None = None,
    tolerance: float = 0.0,
) -> Report:
    """Check recorded events for double activations, epoch regressions and
    lost pids.

    ``expected_pids``: pids that must still be alive; a pid is *lost* when it
    has no event with ``t >= alive_since`` (no event at all if ``alive_since``
    is None).  ``tolerance``: overlaps of at most this many seconds are
    ignored (default 0: any ``last_a > first_b`` counts; equality never does).
    """
    events = list(events)
    acts = activations(events)
    report = Report(activations=len(acts), events=len(events))

    by_pid: dict[str, list[Activation]] = {}
    for a in acts:  # sorted by (pid, epoch)
        by_pid.setdefault(a.pid, []).append(a)
        if len(a.nodes) > 1:
            report.split_epochs.append(SplitEpoch(a.pid, a.epoch, a.nodes))
    report.pids = len(by_pid)

    for pid, group in by_pid.items():
        # Overlaps: in epoch order, report every earlier (lower) epoch whose
        # last event is later than this activation's first (+ tolerance).
        heap: list[tuple[float, int, Activation]] = []
        for b in group:
            for _, _, a in sorted(_heap_greater(heap, b.first + tolerance), key=lambda x: x[1]):
                report.overlaps.append(Overlap(pid, a.epoch, a.node, b.epoch, b.node, a.last - b.first))
            heapq.heappush(heap, (-b.last, b.epoch, b))

        # Backwards: in start order, every activation that started strictly
        # earlier with a higher epoch.  Equal start times are processed as a
        # group (queried before any of them is inserted).
        heap2: list[tuple[int, int, Activation]] = []
        by_first = sorted(group, key=lambda a: (a.first, a.epoch))
        i = 0
        while i < len(by_first):
            j = i
            while j < len(by_first) and by_first[j].first == by_first[i].first:
                j += 1
            for b in by_first[i:j]:
                for _, _, a in sorted(_heap_greater(heap2, b.epoch), key=lambda x: x[1]):
                    report.backwards.append(Backwards(pid, a.epoch, a.node, a.first, b.epoch, b.node, b.first))
            for b in by_first[i:j]:
                heapq.heappush(heap2, (-b.epoch, b.epoch, b))
            i = j

    if expected_pids is not None:
        latest: dict[str, float] = {}
        for a in acts:
            if a.last > latest.get(a.pid, -math.inf):
                latest[a.pid] = a.last
        since = -math.inf if alive_since is None else float(alive_since)
        report.lost = sorted(p for p in set(map(str, expected_pids)) if p not in latest or latest[p] < since)
    return report
