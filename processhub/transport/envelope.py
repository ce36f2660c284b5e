"""Authenticated envelopes (DESIGN I11): only the hub speaks, and nothing it said can be said again.

Every message between clients and nodes travels sealed::

    0xA2 | key id (4) | sender (8) | counter (8, big-endian) | sent at (8, ms) | MAC (16) | payload (JSON)

The MAC is HMAC-SHA256, truncated to 16 bytes, over the header fields, the
*destination channel* and the payload, keyed with the hub's secret (the ``SECRET``
setting, by default derived from Django's ``SECRET_KEY``). So a message cannot be
forged without the secret, nor moved to another channel (node and reply channels
are per incarnation: a restarted receiver never accepts what was sent to its
predecessor). Freshness: a receiver refuses a message sent more than
``REPLAY_WINDOW`` seconds ago (or ahead), and, for each sender and channel, any
counter not larger than the last one it accepted; senders are per connection (a
random id, a counter that only grows), and Redis delivers one connection's
messages to a channel in order. Receivers forget a sender ``2 * REPLAY_WINDOW``
after its last message, when its messages could only be stale anyway.

Key rotation: receivers accept every key in ``SECRET`` + ``SECRET_FALLBACKS``;
senders sign with ``SECRET``. Deploy the new secret as a fallback everywhere,
then as the secret, then drop the old one.

Pure: no sockets, no loop; the time is passed in.
"""
from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import struct
from collections.abc import Iterable

WIRE_VERSION = 2
MAGIC = b"\xa2"
_FIELDS = struct.Struct(">4s8sQQ")  # key id, sender, counter, sent at (ms)
MAC_SIZE = 16
HEADER_SIZE = 1 + _FIELDS.size + MAC_SIZE
PURPOSE = b"processhub.envelope.v2"


class EnvelopeRefused(Exception):
    """A received message that is not a fresh, authentic envelope of this hub; ``reason`` names why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def derive_key(secret: str | bytes) -> bytes:
    """The envelope key of a secret (a purpose string keeps it apart from every other use of SECRET_KEY)."""
    raw = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(raw, PURPOSE, hashlib.sha256).digest()


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"id" + key).digest()[:4]


class Keys:
    """The key senders sign with, and every key receivers accept (rotation)."""

    def __init__(self, secret: str | bytes, fallbacks: Iterable[str | bytes] = ()) -> None:
        self.current = derive_key(secret)
        self.current_id = key_id(self.current)
        self.accepted = {self.current_id: self.current}
        for old in fallbacks:
            k = derive_key(old)
            self.accepted.setdefault(key_id(k), k)
        # The MAC of each accepted key, its HMAC pads absorbed once (see _Mac).
        self.macs = {kid: _Mac(k) for kid, k in self.accepted.items()}
        self.current_mac = self.macs[self.current_id]


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


class _Mac:
    """HMAC-SHA256 of one key, truncated to MAC_SIZE: ``_mac`` (``hmac.digest``) computes the same.

    The key's inner and outer pads (RFC 2104) are absorbed once; each MAC starts
    from copies of those two SHA-256 states. The one-shot ``hmac.digest`` sets up
    an OpenSSL MAC context and absorbs both pads again for every message: more than
    twice the work, on both ends of every message. The pad states are never updated
    in place, so threads may share them.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        block = hashlib.sha256().block_size
        if len(key) > block:
            key = hashlib.sha256(key).digest()
        key = key.ljust(block, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def __call__(self, fields: bytes, channel: bytes, payload: bytes) -> bytes:
        """The MAC of the header fields, the destination channel (length-prefixed) and the payload."""
        inner = self._inner.copy()
        inner.update(b"".join((fields, len(channel).to_bytes(2, "big"), channel, payload)))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:MAC_SIZE]


def _mac(key: bytes, fields: bytes, channel: bytes, payload: bytes) -> bytes:
    """The MAC's reference construction (``_Mac`` computes the same, faster): HMAC-SHA256, truncated."""
    data = b"".join((fields, len(channel).to_bytes(2, "big"), channel, payload))
    return hmac.digest(key, data, "sha256")[:MAC_SIZE]


_COUNTER_AND_TIME = struct.Struct(">QQ")  # the fields that change with every message: counter, sent at (ms)
_MAC_AT = 1 + _FIELDS.size


class Sealer:
    """Seals what one connection sends: one sender id, one counter that only grows."""

    __slots__ = ("keys", "sender", "_counter", "_head", "_mac")

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.sender = os.urandom(8)
        self._counter = itertools.count(1)  # next() is atomic under the GIL: threads may share a sealer
        self._head = keys.current_id + self.sender  # _FIELDS' key id and sender, the same in every message
        self._mac = keys.current_mac

    def seal(self, channel: bytes, payload: bytes, now: float) -> bytes:
        fields = self._head + _COUNTER_AND_TIME.pack(next(self._counter), int(now * 1000))
        return b"".join((MAGIC, fields, self._mac(fields, channel, payload), payload))


class Opener:
    """Checks what one receiver gets: authentic, for this channel, fresh, and never seen before."""

    def __init__(self, keys: Keys, window: float) -> None:
        self.keys = keys
        self.window = window
        self._last: dict[tuple[bytes, bytes], tuple[int, float]] = {}  # (sender, channel) -> (counter, seen)
        self._swept = 0.0

    def open(self, channel: bytes, data: bytes, now: float) -> bytes:
        """The payload of a sealed message, or EnvelopeRefused."""
        if data[:1] != MAGIC:
            raise EnvelopeRefused("unsigned")
        if len(data) < HEADER_SIZE:
            raise EnvelopeRefused("malformed")
        kid, sender, counter, sent_ms = _FIELDS.unpack_from(data, 1)
        mac = self.keys.macs.get(kid)
        if mac is None:
            raise EnvelopeRefused("unknown key")
        payload = data[HEADER_SIZE:]
        if not hmac.compare_digest(data[_MAC_AT:HEADER_SIZE], mac(data[1:_MAC_AT], channel, payload)):
            raise EnvelopeRefused("bad signature")
        if abs(now - sent_ms / 1000) > self.window:
            raise EnvelopeRefused("stale")
        slot = (sender, channel)
        last = self._last.get(slot)
        if last is not None and counter <= last[0]:
            raise EnvelopeRefused("replayed")
        self._last[slot] = (counter, now)
        if now - self._swept > self.window:
            self._sweep(now)
        return payload

    def _sweep(self, now: float) -> None:
        self._swept = now
        horizon = now - 2 * self.window
        for slot in [s for s, (_, seen) in self._last.items() if seen < horizon]:
            del self._last[slot]

    def senders(self) -> int:
        return len(self._last)


def legacy_request(data: bytes) -> tuple[str, str] | None:
    """(reply channel, correlation id) of a request in the unsigned wire format of version 1, else None.

    A node answers those (unsigned, rate-limited) with an error naming both wire
    versions, so a client of the older release learns why instead of timing out.
    """
    if data[:1] != b"{" or len(data) > 64 * 1024:
        return None
    try:
        env = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if isinstance(env, dict) and isinstance(env.get("r"), str) and isinstance(env.get("id"), str):
        return env["r"], env["id"]
    return None


def legacy_refusal(corr: str) -> bytes:
    """The unsigned, version-1 reply that tells an older client which wire version this hub speaks."""
    return json.dumps({"t": "reply", "id": corr, "ok": False, "err": "invalid",
                       "msg": f"incompatible wire version: this hub speaks wire version {WIRE_VERSION}, "
                              f"the sender speaks version 1; upgrade processhub on every node and client"}).encode()
