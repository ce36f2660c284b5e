"""Value types shared by the client, the node and the store: where a process runs, what a row holds.

Plain frozen dataclasses and string constants, no Django import, so that every
module can use them without importing the modules that produce them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Process row statuses (the model's ``ProcessStatus`` choices use the same strings).
RUNNING, STOPPED, FAILED, IDLE = "running", "stopped", "failed", "idle"
# Node row statuses (the model's ``NodeStatus``): takes work; drained (takes only what no node that is up
# can); shutting down (takes nothing, hands everything away); gone.
UP, DRAINING, LEAVING, DOWN = "up", "draining", "leaving", "down"


@dataclass(frozen=True, slots=True)
class ProcessRef:
    """Where one activation of a process runs (its id, node and epoch), with its tags, metadata and status.

    ``node``/``node_id`` are empty for a process that runs nowhere (``status`` not "running").
    """

    label: str
    process_id: str
    node: str
    node_id: str
    epoch: int
    created: bool = False
    channel: str = field(default="", repr=False, compare=False)
    tags: tuple[str, ...] = field(default=(), compare=False)
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    status: str = field(default=RUNNING, compare=False)

    def as_wire(self) -> dict:
        return {"l": self.label, "p": self.process_id, "n": self.node, "ni": self.node_id, "e": self.epoch,
                "c": self.channel, "tg": list(self.tags), "md": self.metadata}

    @classmethod
    def from_wire(cls, d: dict, created: bool = False) -> ProcessRef:
        return cls(d["l"], d["p"], d["n"], d["ni"], d["e"], created, d["c"], tuple(d.get("tg") or ()),
                   d.get("md") or {})


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A live node incarnation as placement sees it: which classes it can run, whether it takes new work."""

    id: str
    name: str
    channel: str
    labels: frozenset[str] = frozenset()
    status: str = UP
    load: int = 0  # activations at its last heartbeat

    def can_run(self, label: str) -> bool:
        return label in self.labels


@dataclass(frozen=True, slots=True)
class Row:
    """One process row as a node needs it to run the process."""

    id: int
    label: str
    process_id: str
    arg: Any
    epoch: int
    restart: str
    handoff: Any = None
    tags: tuple[str, ...] = ()
    metadata: Any = None
    groups: tuple[str, ...] = ()
    guided: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.label, self.process_id)


@dataclass(frozen=True, slots=True)
class StartSpec:
    """What one start asks for: the argument, and what a row it creates (or restarts) carries."""

    arg: Any
    restart: str
    tags: tuple[str, ...] | None = None  # None: an existing row keeps its own
    metadata: dict[str, Any] | None = None
    guided: bool = False  # placed on a named node
    token: str | None = None  # the start_many call it belongs to
    reactivate_only: bool = False  # only wake a passivated process (a message with start=False): no argument
    was_idle: bool = False  # the caller's lookup found the row idle: wake it in one statement before inserting


@dataclass(frozen=True, slots=True)
class OrphanRow:
    """A running row whose owner is dead or absent, with that owner (None: no node)."""

    row: Row
    owner: str | None


@dataclass(frozen=True, slots=True)
class Lookup:
    """Where a process is, for clients."""

    label: str
    process_id: str
    status: str
    epoch: int
    node_id: str | None
    node_name: str | None
    channel: str | None
    owner_alive: bool
    row_id: int = 0
    owner_wire: int | None = None  # the wire version of the owning node
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
