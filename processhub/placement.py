"""Pure placement: rendezvous (highest-random-weight) hashing of a process over live nodes.

Deterministic and minimal-movement: when a node joins or leaves, only the ids
whose top-scoring node changed move. Only nodes that can run the process's
class take part, and draining nodes only when no node that is up can. No
Django import here.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from .values import UP, NodeInfo


def key(label: str, process_id: str) -> str:
    """The string every placement decision hashes: one per (class label, process id)."""
    return f"{label}:{process_id}"


def score(node_name: str, placement_key: str) -> int:
    digest = hashlib.blake2b(f"{node_name}\x00{placement_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def choose(placement_key: str, node_names: Iterable[str]) -> str | None:
    """The name of the node that should own ``placement_key``, or None when there is none."""
    best: tuple[int, str] | None = None
    for name in node_names:
        candidate = (score(name, placement_key), name)
        if best is None or candidate > best:
            best = candidate
    return None if best is None else best[1]


def eligible(label: str, nodes: Sequence[NodeInfo], capacity: int | None = None) -> list[NodeInfo]:
    """The nodes that may own a process of class ``label``: those up that run the class, else draining ones.

    A drained node takes nothing while a node that is up can, but it is not left
    idle while every process of the class would fail with "no live node". With a
    ``capacity``, full nodes are left out.
    """
    capable = [n for n in nodes if n.can_run(label) and (capacity is None or n.load < capacity)]
    up = [n for n in capable if n.status == UP]
    return up or capable


def choose_node(label: str, process_id: str, nodes: Sequence[NodeInfo], capacity: int | None = None) -> NodeInfo | None:
    """The live node that should own ``label``/``process_id`` (see ``eligible``), or None."""
    candidates = eligible(label, nodes, capacity)
    if not candidates:
        return None
    by_name = {n.name: n for n in candidates}
    name = choose(key(label, process_id), by_name)
    return None if name is None else by_name[name]
