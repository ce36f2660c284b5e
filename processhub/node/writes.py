"""Write tracking: which process keys the node's own registry writes touched since a moment.

A reconcile reads the node's rows, then acts on the difference. A write of its
own that overlapped the read (a start, a restart, a move) makes the read stale
for that key, so the reconcile leaves the key for its next pass. The node keeps
one sequence counter; a read notes it before it starts (``reading``), every write
bumps it when it ends, and ``written_since`` answers from the writes in flight and
the finished ones that a read still in flight may ask about. The rest is
forgotten at once: a node that passivated 100,000 processes kept all their keys
in the history, and with them the memory they were allocated in. A question
nobody registered for, or older than the bounded history, gets ``None``
("unknown, look again").
"""
from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Iterable, Iterator

Key = tuple[str, str]

# Finished writes remembered; a reconcile read that overlapped more writes than this is judged next time.
HISTORY = 4096


class WriteTracker:
    def __init__(self, history: int = HISTORY) -> None:
        self._counter = itertools.count(1)
        self.last = 0  # the latest value handed out
        self._in_flight: dict[Key, int] = {}
        self._unkeyed = 0
        self._done: deque[tuple[int, frozenset[Key] | None]] = deque()
        self._history = history
        self._forgotten = 0  # the newest sequence value dropped from the history
        self._reads: set[int] = set()  # points of the reads in flight

    def tick(self) -> int:
        """A new point in the sequence (an activation that begins; a read uses ``reading``)."""
        self.last = next(self._counter)
        return self.last

    @contextlib.contextmanager
    def reading(self) -> Iterator[int]:
        """A read of the node's rows in flight: its point, for ``written_since`` until the block ends."""
        point = self.tick()
        self._reads.add(point)
        try:
            yield point
        finally:
            self._reads.discard(point)
            self._prune()

    def _prune(self) -> None:
        """Forget the finished writes no read in flight can ask about (all of them while none is)."""
        oldest = min(self._reads, default=self.last)
        done = self._done
        while done and done[0][0] <= oldest:
            self._forgotten = done.popleft()[0]

    def begin(self, keys: Iterable[Key] | None) -> frozenset[Key] | None:
        """A write starts; ``keys`` None means it may touch any key. Returns the token for ``end``."""
        if keys is None:
            self._unkeyed += 1
            return None
        token = frozenset(keys)
        for k in token:
            self._in_flight[k] = self._in_flight.get(k, 0) + 1
        return token

    def end(self, token: frozenset[Key] | None) -> None:
        if token is None:
            self._unkeyed -= 1
        else:
            for k in token:
                n = self._in_flight[k] - 1
                if n:
                    self._in_flight[k] = n
                else:
                    del self._in_flight[k]
        self._done.append((self.tick(), token))
        if len(self._done) > self._history:
            self._forgotten = self._done.popleft()[0]
        elif not self._reads:
            self._prune()

    def written_since(self, point: int) -> set[Key] | None:
        """Keys written (or being written) after ``point``; None when that cannot be known."""
        if self._unkeyed or self._forgotten > point:
            return None
        out = set(self._in_flight)
        for seq, keys in reversed(self._done):
            if seq <= point:
                break
            if keys is None:
                return None
            out |= keys
        return out

    def size(self) -> int:
        """Entries held (bounded: in-flight keys plus at most ``history`` finished writes, none while no read
        is in flight)."""
        return len(self._in_flight) + len(self._done)
