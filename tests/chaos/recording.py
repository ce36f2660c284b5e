"""The chaos suite's evidence: recorder events read back from Redis and judged.

``ChaosRecorder`` activations (tests/hubtest/processes.py) push JSON events to one
Redis list per test or run. :func:`judge` folds them into a :class:`Verdict`:

* the double-activation checker (tests/chaos/detector.py) runs on the events
  taken under a valid lease (``ok``): every overlap, backwards epoch or split
  epoch among those is a real violation of DESIGN I1, never a timing artefact;
* ``late`` lists actions taken after the node's lease had run out (``ok`` false).
  A handler that was already past its lease check when the node froze can do
  that (the check-then-act window that fenced writes, I4, exist for), so they
  are counted and shown rather than failed on; a *start* among them means an
  activation began without a valid lease, which tests do fail on;
* ``twins`` lists two instances of one (id, epoch) alive at the same time, which
  the detector cannot see because they share their key.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.chaos.detector import Report, check


def recorder_arg(pid: str, key: str, tick: float = 0.2) -> dict:
    return {"id": pid, "key": key, "tick": tick}


def read_events(redis_client: Any, key: str, chunk: int = 20_000) -> list[dict]:
    """Every event in the list ``key`` (read in chunks; the list is left in place)."""
    out: list[dict] = []
    start = 0
    while True:
        batch = redis_client.lrange(key, start, start + chunk - 1)
        out.extend(json.loads(b) for b in batch)
        if len(batch) < chunk:
            return out
        start += chunk


def compact(events: Iterable[dict]) -> list[dict]:
    """The events that decide every verdict: per (pid, epoch, node, instance, ok) the first and the last.

    :func:`judge` gives the same answer on the compacted list, which stays small
    however long a run ticks (a ten-minute run records about a million events).
    """
    keep: dict[tuple, list] = {}
    for e in events:
        key = (e["pid"], e["epoch"], e["node"], e.get("inst"), e.get("ok", True))
        span = keep.get(key)
        if span is None:
            keep[key] = [e, e]
            continue
        if e["t"] < span[0]["t"]:
            span[0] = e
        if e["t"] > span[1]["t"] or e["kind"] == "stop" and e["t"] == span[1]["t"]:
            span[1] = e
        if e["kind"] == "stop" and span[1]["kind"] != "stop":
            span[1] = {**span[1], "kind": "stop"}
    out = []
    for first, last in keep.values():
        out.append(first)
        if last is not first:
            out.append(last)
    return out


def read_compacted(redis_client: Any, key: str, chunk: int = 20_000) -> tuple[list[dict], int, int]:
    """:func:`compact` of the list ``key``, read in chunks.

    Returns (events, how many were read, how many of those were late actions).
    """
    kept: list[dict] = []
    total = late = 0
    start = 0
    while True:
        batch = [json.loads(b) for b in redis_client.lrange(key, start, start + chunk - 1)]
        total += len(batch)
        late += sum(1 for e in batch if not e.get("ok", True))
        kept = compact([*kept, *batch])
        if len(batch) < chunk:
            return kept, total, late
        start += chunk


@dataclass(frozen=True)
class Twin:
    pid: str
    epoch: int
    nodes: tuple[str, ...]
    overlap_seconds: float


@dataclass
class Verdict:
    report: Report
    late: list[dict] = field(default_factory=list)
    twins: list[Twin] = field(default_factory=list)
    events: int = 0

    @property
    def late_starts(self) -> list[dict]:
        return [e for e in self.late if e["kind"] == "start"]

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.twins

    def failures(self) -> dict[str, int]:
        r = self.report
        return {"overlaps": len(r.overlaps), "backwards": len(r.backwards), "split_epochs": len(r.split_epochs),
                "lost": len(r.lost), "twins": len(self.twins)}

    def summary(self, limit: int = 10) -> str:
        lines = [self.report.summary(limit)]
        lines.append(f"late actions (after the lease ran out): {len(self.late)} ({len(self.late_starts)} starts)")
        for e in self.late[:limit]:
            lines.append(f"  late {e['kind']} pid={e['pid']} epoch={e['epoch']} node={e['node']} t={e['t']:.3f}")
        if self.twins:
            lines.append(f"twins: {len(self.twins)}")
            lines.extend(f"  pid={t.pid} epoch={t.epoch} instances on {', '.join(t.nodes)} overlapped "
                         f"{t.overlap_seconds:.3f}s" for t in self.twins[:limit])
        return "\n".join(lines)


def _twins(events: Iterable[dict]) -> list[Twin]:
    spans: dict[tuple[str, int], dict[str, list]] = {}
    for e in events:
        inst = e.get("inst")
        if inst is None:
            continue
        per = spans.setdefault((str(e["pid"]), int(e["epoch"])), {})
        span = per.get(inst)
        if span is None:
            per[inst] = [e["t"], e["t"], e["node"]]
        else:
            span[0], span[1] = min(span[0], e["t"]), max(span[1], e["t"])
    found = []
    for (pid, epoch), per in spans.items():
        if len(per) < 2:
            continue
        ordered = sorted(per.values())
        for a, b in zip(ordered, ordered[1:], strict=False):
            if a[1] > b[0]:
                found.append(Twin(pid, epoch, (a[2], b[2]), a[1] - b[0]))
    return found


def judge(events: list[dict], expected: Iterable[str] | None = None, alive_since: float | None = None) -> Verdict:
    """Judge recorder events; ``expected`` ids must have an event under a valid lease at/after ``alive_since``."""
    trusted = [e for e in events if e.get("ok", True)]
    late = sorted((e for e in events if not e.get("ok", True)), key=lambda e: e["t"])
    report = check(trusted, expected_pids=expected, alive_since=alive_since)
    return Verdict(report, late, _twins(trusted), len(events))
