"""The chaos suite's evidence: recorder events read back from Redis and judged against the database's leases.

The recorders (``ChaosRecorder``, ``BlockingRecorder``: tests/hubtest/processes.py)
push one JSON event per callback they run to a Redis list that is not behind any
node's proxy::

    {"pid", "label", "node", "nid", "epoch", "inst", "os", "kind", "cb", "t", ...}

``kind`` is what the double-activation checker reads (``start`` for ``init``,
``stop`` for ``terminate``, ``tick`` for every other action), ``cb`` the callback
(or ``block`` for one step of a blocking plain ``def`` handler), ``nid`` the node
incarnation, ``inst`` the Python instance, ``os`` the OS process, ``t`` the wall
clock (all nodes, PostgreSQL and the test share one machine, hence one clock).

:func:`judge` turns events into a :class:`Verdict`, given the lease end of every
incarnation *by the database's clock* (:func:`lease_ends_from_rows`):

* an event with ``t`` after its incarnation's lease ended is a **late action**:
  user code acting when another node may already run the same id. It fails the
  verdict unless an :class:`Allow` that the test names covers it;
* the other events go to the double-activation checker (tests/chaos/detector.py):
  any overlap, backwards epoch or split epoch among them fails;
* **twins**: two instances of one (id, epoch) alive at once (the checker cannot
  see them: they share their key);
* **unjudged** events (an incarnation the database does not know) and
  **unrecorded** events (the recorder could not write them, see :func:`note_lost`)
  fail too: evidence the verdict cannot see is not a pass.

Events after ``lease_end - LEASE_SAFETY_MARGIN`` (the node's own deadline) but not
after ``lease_end`` are counted for diagnosis (``in_margin``) and never fail.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.chaos.detector import Report, check


def recorder_arg(pid: str, key: str, tick: float = 0.2) -> dict:
    return {"id": pid, "key": key, "tick": tick}


def read_events(redis_client: Any, key: str, chunk: int = 20_000, stop: int | None = None) -> list[dict]:
    """Every event in the list ``key`` (the first ``stop`` only, when given); the list is left in place."""
    out: list[dict] = []
    for batch in iter_events(redis_client, key, chunk, stop):
        out.extend(batch)
    return out


def iter_events(redis_client: Any, key: str, chunk: int = 20_000, stop: int | None = None):
    """The events of ``key`` in batches of at most ``chunk`` (the first ``stop`` only, when given)."""
    start = 0
    while stop is None or start < stop:
        end = start + chunk - 1 if stop is None else min(start + chunk, stop) - 1
        batch = [json.loads(b) for b in redis_client.lrange(key, start, end)]
        if batch:
            yield batch
        if len(batch) < end - start + 1:
            return
        start += len(batch)


# ---------------------------------------------------------------- recorder write failures


def _lost_dir() -> Path:
    return Path(os.environ.get("CHAOS_LOST_DIR") or Path(tempfile.gettempdir()) / "processhub-chaos-lost")


def _digest(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def note_lost(key: str, event: Mapping[str, Any], error: BaseException | str) -> None:
    """Keep an event the recorder could not push to Redis, so the verdict fails instead of missing it.

    One JSON line per event in ``$CHAOS_LOST_DIR`` (default: the temp dir's
    ``processhub-chaos-lost``), one file per list key and OS process: a node
    process writes its own file, nothing is shared between processes.
    """
    path = _lost_dir() / f"{_digest(key)}.{os.getpid()}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({**event, "error": repr(error)[:200]}) + "\n")


def lost_events(key: str) -> list[dict]:
    """The events that recorders of list ``key`` could not write (every OS process)."""
    out: list[dict] = []
    for path in sorted(_lost_dir().glob(f"{_digest(key)}.*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:  # a line cut short by a SIGKILL: still a lost event
                    out.append({"error": "unreadable line", "line": line[:200]})
    return out


def clear_lost(key: str) -> None:
    for path in _lost_dir().glob(f"{_digest(key)}.*.jsonl"):
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------- lease ends (database clock)


def lease_ends_from_rows(rows: Iterable[tuple[str, float, float | None]], ttl: float) -> dict[str, float]:
    """{incarnation: the moment its lease ended or ends} from ``(id, lease_expires_at, heartbeat_at)`` seconds.

    The end is ``min(lease_expires_at, heartbeat_at + NODE_TTL)``: other nodes may
    take over once the database clock passes ``heartbeat_at + NODE_TTL`` (DESIGN I2),
    while a node that marks itself down sets ``lease_expires_at`` to that moment --
    which, for a node that marks itself down only after waking from a pause,
    lies *after* the real end and must not hide what it did meanwhile.
    """
    ends: dict[str, float] = {}
    for nid, expires, heartbeat in rows:
        end = float(expires)
        if heartbeat is not None:
            end = min(end, float(heartbeat) + ttl)
        ends[str(nid)] = end
    return ends


def read_lease_ends(ttl: float, using: str = "default") -> dict[str, float]:
    """:func:`lease_ends_from_rows` of every node row of the database (read *after* the events)."""
    from django.db import close_old_connections

    from processhub.models import Node

    close_old_connections()
    rows = Node.objects.using(using).values_list("id", "lease_expires_at", "heartbeat_at")
    return lease_ends_from_rows(((nid, exp.timestamp(), hb.timestamp() if hb else None) for nid, exp, hb in rows),
                                ttl)


# ---------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class Allow:
    """A late action the test expects, and why: covers late events of ``who`` in ``[after, after + within]``.

    ``who`` is an incarnation id or a node name; ``callbacks`` (e.g. ``("block",)``)
    narrows it to those callbacks. The one allowance the suite uses: a plain ``def``
    handler's step racing its node's exit for a few ms right after SIGCONT.
    """

    who: str
    after: float
    reason: str
    within: float = 0.1
    callbacks: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.reason.strip():
            raise ValueError("an allowance must say why the late action is expected")

    def covers(self, e: Mapping[str, Any]) -> bool:
        return (self.who in (e.get("nid"), e.get("node")) and self.after <= e["t"] <= self.after + self.within
                and (self.callbacks is None or e.get("cb") in self.callbacks))


@dataclass(frozen=True)
class Twin:
    pid: str
    epoch: int
    nodes: tuple[str, ...]
    overlap_seconds: float


@dataclass
class Verdict:
    report: Report  # the double-activation checker on the events inside their lease
    late: list[dict] = field(default_factory=list)  # late actions no allowance covers: each fails
    allowed: list[tuple[dict, Allow]] = field(default_factory=list)
    unjudged: list[dict] = field(default_factory=list)  # incarnation unknown to the database
    unrecorded: list[dict] = field(default_factory=list)  # recorder write failures
    twins: list[Twin] = field(default_factory=list)
    events: int = 0
    in_margin: int = 0  # after the node's own deadline, inside the database's lease: diagnosis only

    @property
    def late_starts(self) -> list[dict]:
        return [e for e in self.late if e["kind"] == "start"]

    @property
    def ok(self) -> bool:
        return self.report.ok and not (self.late or self.twins or self.unjudged or self.unrecorded)

    def failures(self) -> dict[str, int]:
        r = self.report
        return {"overlaps": len(r.overlaps), "backwards": len(r.backwards), "split_epochs": len(r.split_epochs),
                "lost": len(r.lost), "twins": len(self.twins), "late": len(self.late),
                "unjudged": len(self.unjudged), "unrecorded": len(self.unrecorded)}

    def summary(self, limit: int = 10) -> str:
        lines = [("VERDICT OK" if self.ok else "VERDICT FAIL") + ": " + ", ".join(
            f"{n} {k}" for k, n in self.failures().items())]
        lines.append("detector: " + self.report.summary(limit))
        lines.append(f"late actions (after the lease ended, database clock): {len(self.late)} "
                     f"({len(self.late_starts)} starts); allowed: {len(self.allowed)}")
        for e in self.late[:limit]:
            lines.append("  late " + _fmt(e))
        if len(self.late) > limit:
            lines.append(f"  ... and {len(self.late) - limit} more")
        for e, a in self.allowed[:limit]:
            lines.append(f"  allowed {_fmt(e)}: {a.reason}")
        lines.append(f"actions within the safety margin (node's deadline passed, lease not; not failing): "
                     f"{self.in_margin}")
        if self.unjudged:
            lines.append(f"unjudged events (incarnation not in the database): {len(self.unjudged)}")
            lines.extend("  " + _fmt(e) for e in self.unjudged[:limit])
        lines.append(f"unrecorded events (recorder write failures): {len(self.unrecorded)}")
        lines.extend(f"  {e}" for e in self.unrecorded[:limit])
        if self.twins:
            lines.append(f"twins: {len(self.twins)}")
            lines.extend(f"  pid={t.pid} epoch={t.epoch} instances on {', '.join(t.nodes)} overlapped "
                         f"{t.overlap_seconds:.3f}s" for t in self.twins[:limit])
        return "\n".join(lines)


def _fmt(e: Mapping[str, Any]) -> str:
    after = f" {e['late_by']:.3f}s after its lease ended" if "late_by" in e else ""
    extra = "".join(f" {k}={e[k]}" for k in ("reason", "step") if k in e)
    return (f"{e.get('kind')}/{e.get('cb', '?')} pid={e.get('pid')} epoch={e.get('epoch')} node={e.get('node')} "
            f"nid={str(e.get('nid'))[:8]} inst={e.get('inst')} t={e.get('t', 0):.3f}{after}{extra}")


def compact(events: Iterable[dict]) -> list[dict]:
    """The events that decide the checker's and the twin verdicts: per (pid, epoch, node, nid, inst) the first and
    the last (a stop anywhere in the group marks the last one as a stop).

    :func:`judge` gives the same answer on the compacted list of in-lease events,
    which stays small however long a run ticks. Late events are never compacted:
    each one is judged against the allowances on its own.
    """
    keep: dict[tuple, list] = {}
    for e in events:
        key = (e["pid"], e["epoch"], e["node"], e.get("nid"), e.get("inst"))
        span = keep.get(key)
        if span is None:
            keep[key] = [e, e, e["kind"] == "stop"]
            continue
        if e["t"] < span[0]["t"]:
            span[0] = e
        if e["t"] > span[1]["t"]:
            span[1] = e
        span[2] = span[2] or e["kind"] == "stop"
    out = []
    for first, last, stopped in keep.values():
        if stopped and last["kind"] != "stop":
            last = {**last, "kind": "stop"}
        out.append(first)
        if last is not first:
            out.append(last)
    return out


def twins(events: Iterable[Mapping[str, Any]]) -> list[Twin]:
    """Instances of one (pid, epoch) whose spans overlap (each instance against every earlier-starting one)."""
    spans: dict[tuple[str, int], dict[Any, list]] = {}
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
    for (pid, epoch), per in sorted(spans.items()):
        if len(per) < 2:
            continue
        ordered = sorted(per.values())
        for i, b in enumerate(ordered):
            for a in ordered[:i]:
                if a[1] > b[0]:
                    found.append(Twin(pid, epoch, (a[2], b[2]), min(a[1], b[1]) - b[0]))
    return found


class Judge:
    """Judges events fed in batches (a long run records millions): late ones kept whole, the rest compacted."""

    def __init__(self, lease_ends: Mapping[str, float], margin: float = 0.0, allow: Iterable[Allow] = ()) -> None:
        self.lease_ends, self.margin, self.allow = dict(lease_ends), margin, tuple(allow)
        self.kept: list[dict] = []
        self.late: list[dict] = []
        self.allowed: list[tuple[dict, Allow]] = []
        self.unjudged: list[dict] = []
        self.events = 0
        self.in_margin = 0

    def feed(self, batch: Iterable[dict]) -> Judge:
        trusted = []
        for e in batch:
            self.events += 1
            end = self.lease_ends.get(e.get("nid"))
            if end is None:
                self.unjudged.append(e)
            elif e["t"] > end:
                e = {**e, "late_by": e["t"] - end}
                cover = next((a for a in self.allow if a.covers(e)), None)
                if cover is None:
                    self.late.append(e)
                else:
                    self.allowed.append((e, cover))
            else:
                if e["t"] > end - self.margin:
                    self.in_margin += 1
                trusted.append(e)
        self.kept = compact([*self.kept, *trusted])
        return self

    def verdict(self, expected: Iterable[str] | None = None, alive_since: float | None = None,
                unrecorded: Iterable[dict] = ()) -> Verdict:
        report = check(self.kept, expected_pids=expected, alive_since=alive_since)
        report.events = self.events
        return Verdict(report, sorted(self.late, key=lambda e: e["t"]), self.allowed, self.unjudged,
                       list(unrecorded), twins(self.kept), self.events, self.in_margin)


def judge(events: Iterable[dict], lease_ends: Mapping[str, float], *, margin: float = 0.0,
          expected: Iterable[str] | None = None, alive_since: float | None = None, allow: Iterable[Allow] = (),
          unrecorded: Iterable[dict] = ()) -> Verdict:
    """Judge recorder events against the lease end of each incarnation (``{nid: seconds}``, database clock).

    ``expected`` ids must have an in-lease event at/after ``alive_since``;
    ``allow`` names the late actions the test expects; ``unrecorded`` are the
    events the recorders could not write (:func:`lost_events`): any fails.
    """
    return Judge(lease_ends, margin, allow).feed(events).verdict(expected, alive_since, unrecorded)
