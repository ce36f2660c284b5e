"""Envelope signing cost: the MAC a sync ``call()`` pays, timed in-process on the envelopes a real call sent.

A call is sealed by the client and opened by the node (the request), then sealed
by the node and opened by the client (the reply): per call, seal + open of each.
``captured()`` records the request and reply of real calls made in this process
(the request as the client sealed it, the reply as the client opened it), and
``cost()`` times ``Sealer.seal`` and ``Opener.open`` on those exact channels and
payloads with ``timeit``-style loops (many iterations, median of rounds).
"""
from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class Sample:
    channel: bytes
    payload: bytes


def _kind(payload: bytes) -> str | None:
    try:
        env = json.loads(payload)
    except ValueError:
        return None
    return env.get("t") if isinstance(env, dict) else None


@contextlib.contextmanager
def captured(reply_channel: str) -> Iterator[dict[str, Sample]]:
    """While the block runs, keep the last call request this process sealed and the last reply it opened."""
    from processhub.transport import envelope

    seen: dict[str, Sample] = {}
    seal, open_ = envelope.Sealer.seal, envelope.Opener.open
    reply = reply_channel.encode()

    def recording_seal(self, channel: bytes, payload: bytes, now: float) -> bytes:
        if _kind(payload) == "call":
            seen["request"] = Sample(channel, payload)
        return seal(self, channel, payload, now)

    def recording_open(self, channel: bytes, data: bytes, now: float) -> bytes:
        payload = open_(self, channel, data, now)
        if channel == reply and _kind(payload) == "reply":
            seen["reply"] = Sample(channel, payload)
        return payload

    envelope.Sealer.seal, envelope.Opener.open = recording_seal, recording_open
    try:
        yield seen
    finally:
        envelope.Sealer.seal, envelope.Opener.open = seal, open_


def seal_open(sample: Sample, n: int, rounds: int = 5) -> tuple[float, float]:
    """Median seconds of one ``seal`` and one ``open`` of ``sample`` (fresh sealer and opener, as a connection has)."""
    from processhub.transport.envelope import Keys, Opener, Sealer

    keys = Keys("benchmark-envelope-signing-" + "x" * 40)
    seals, opens = [], []
    for _ in range(rounds):
        sealer, opener = Sealer(keys), Opener(keys, 30.0)
        ch, payload, clock = sample.channel, sample.payload, time.time
        t0 = time.perf_counter()
        sealed = [sealer.seal(ch, payload, clock()) for _ in range(n)]
        t1 = time.perf_counter()
        for data in sealed:
            opener.open(ch, data, clock())
        t2 = time.perf_counter()
        seals.append((t1 - t0) / n)
        opens.append((t2 - t1) / n)
    return statistics.median(seals), statistics.median(opens)


def cost(samples: dict[str, Sample], n: int) -> tuple[float, str]:
    """Seconds of signing work per call (seal + open of the request and of the reply), and a note."""
    total, parts = 0.0, []
    for what in ("request", "reply"):
        s, o = seal_open(samples[what], n)
        total += s + o
        parts.append(f"{what} {len(samples[what].payload)} B: seal {s * 1e6:.2f} us + open {o * 1e6:.2f} us")
    return total, "; ".join(parts) + f" ({n:,} iterations x 5 rounds, median)"
