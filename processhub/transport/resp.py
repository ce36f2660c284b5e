"""The Redis wire protocol (RESP2) and processhub's frames, as pure functions: no sockets, no loop.

* ``RespReader``: an incremental parser (``feed`` bytes, ``gets`` replies; False
  while incomplete), the same interface as ``hiredis.Reader``, which is used
  instead when installed.
* ``pack``: one command as RESP.
* ``frames`` / ``unframe``: several messages to one channel in one PUBLISH.
  A frame is FRAME_MARK, then (4-byte big-endian length, bytes) per message. A
  JSON envelope never starts with 0xFF (not even valid UTF-8), so a plain
  message is never mistaken for a frame. ``unframe`` bounds what it returns,
  whatever arrives: a hostile publish of a million tiny frames costs one
  bounded loop, not a million handler calls.
"""
from __future__ import annotations

from typing import Any


class RedisReplyError(Exception):
    """An error reply (``-ERR ...``) from Redis, or a protocol error."""


class _Incomplete(Exception):
    pass


class RespReader:
    """Incremental RESP2 parser: ``feed`` bytes, ``gets`` replies (False while incomplete), like hiredis.Reader."""

    __slots__ = ("buf", "pos")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.pos = 0

    def feed(self, data: bytes) -> None:
        if self.pos:
            del self.buf[: self.pos]
            self.pos = 0
        self.buf += data

    def gets(self) -> Any:
        try:
            value, self.pos = _parse(self.buf, self.pos)
        except _Incomplete:
            return False
        return value


def _parse(buf: bytearray, pos: int) -> tuple[Any, int]:
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = buf[pos]
    if kind == 36:  # $ bulk string
        n = int(buf[pos + 1:end])
        if n < 0:
            return None, end + 2
        start = end + 2
        if len(buf) < start + n + 2:
            raise _Incomplete
        return bytes(buf[start:start + n]), start + n + 2
    if kind == 42:  # * array
        n = int(buf[pos + 1:end])
        pos = end + 2
        if n < 0:
            return None, pos
        items = []
        for _ in range(n):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == 58:  # : integer
        return int(buf[pos + 1:end]), end + 2
    if kind == 43:  # + simple string
        return bytes(buf[pos + 1:end]).decode(), end + 2
    if kind == 45:  # - error
        return RedisReplyError(bytes(buf[pos + 1:end]).decode(errors="replace")), end + 2
    raise RedisReplyError(f"RESP protocol error: unexpected byte {kind!r}")


def reader() -> Any:
    """A RESP reader: hiredis when installed, else ``RespReader``."""
    try:
        import hiredis
    except ImportError:
        return RespReader()
    return hiredis.Reader(replyError=RedisReplyError, protocolError=RedisReplyError)


def pack(*args: bytes) -> bytes:
    """One Redis command in RESP."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


def publish_command(channel: bytes, data: bytes) -> bytes:
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(channel), channel, len(data), data)


FRAME_MARK = b"\xff"
# Only channels named with FRAMED_SUFFIX get frames: their reader is a processhub RedisTransport (nodes' and
# clients' own channels); anything else (a script listening with redis-py) gets one message each.
FRAMED_SUFFIX = ".framed"
# Bytes per frame: keeps a subscriber's output buffer in Redis far below its limits.
FRAME_MAX = 256 * 1024
# Messages one received frame may hold (a sender's frame holds at most FRAME_MAX bytes of them).
MAX_FRAMES = 4096


def frames(datas: list[bytes], tags: list[Any]) -> tuple[list[bytes], list[list[Any]]]:
    """Pack messages into frames of at most FRAME_MAX bytes; ``tags[i]`` follows message i into its frame's group."""
    payloads: list[bytes] = []
    groups: list[list[Any]] = []
    parts: list[bytes] = [FRAME_MARK]
    group: list[Any] = []
    size = 1
    for data, tag in zip(datas, tags, strict=True):
        if group and size + 4 + len(data) > FRAME_MAX:
            payloads.append(b"".join(parts))
            groups.append(group)
            parts, group, size = [FRAME_MARK], [], 1
        parts += (len(data).to_bytes(4, "big"), data)
        group.append(tag)
        size += 4 + len(data)
    payloads.append(b"".join(parts))
    groups.append(group)
    return payloads, groups


def unframe(data: bytes, max_frames: int = MAX_FRAMES) -> tuple[list[bytes], int]:
    """(the messages of a frame, how many were dropped). A malformed frame is handed on whole (its reader
    rejects it); a frame with more than ``max_frames`` messages is cut there."""
    out: list[bytes] = []
    pos, end = 1, len(data)
    while pos < end:
        if len(out) >= max_frames:
            return out, 1  # the rest is not even counted: counting it would be the unbounded loop
        size = int.from_bytes(data[pos:pos + 4], "big")
        pos += 4
        if pos > end or pos + size > end:
            return [data], 0
        out.append(data[pos:pos + size])
        pos += size
    return out, 0
