"""Pure placement: rendezvous (highest-random-weight) hashing of a process id over live nodes.

Deterministic and minimal-movement: when a node joins or leaves, only the ids
whose top-scoring node changed move. No Django import here.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")


def score(node_name: str, process_id: str) -> int:
    digest = hashlib.blake2b(f"{node_name}\x00{process_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def choose(process_id: str, node_names: Iterable[str]) -> str | None:
    """The name of the node that should own ``process_id``, or None when there is none."""
    best: tuple[int, str] | None = None
    for name in node_names:
        key = (score(name, process_id), name)
        if best is None or key > best:
            best = key
    return None if best is None else best[1]


def choose_item(process_id: str, items: Sequence[T], name_of) -> T | None:
    """Like ``choose`` over objects; ``name_of(item)`` gives the hashed name."""
    by_name = {name_of(item): item for item in items}
    name = choose(process_id, by_name)
    return None if name is None else by_name[name]
