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
    """Incremental RESP2 parser: ``feed`` bytes, ``gets`` replies (False while incomplete), like hiredis.Reader.

    A read usually holds whole replies: it is parsed where it lies, no copy into a
    buffer first. Only a reply split across reads is gathered in a bytearray
    (amortised growth, so a large message arriving in many reads stays linear).
    """

    __slots__ = ("buf", "pos")

    def __init__(self) -> None:
        self.buf: bytes | bytearray = b""
        self.pos = 0

    def feed(self, data: bytes) -> None:
        buf, pos = self.buf, self.pos
        if pos >= len(buf):
            self.buf = bytes(data)  # everything before was consumed (the common case); bytes(b) is b itself
        elif type(buf) is bytearray:
            del buf[:pos]
            buf += data
        else:
            self.buf = bytearray(buf[pos:]) + data
        self.pos = 0

    def gets(self) -> Any:
        if self.pos >= len(self.buf):
            return False  # nothing left: no parse attempt (and no exception) after the last reply of a read
        try:
            value, self.pos = _parse(self.buf, self.pos)
        except _Incomplete:
            return False
        return value


_MESSAGE = b"*3\r\n$7\r\nmessage\r\n$"  # how every pub/sub message begins, up to its channel's length


def _parse(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    if buf.startswith(_MESSAGE, pos):  # what a subscriber reads most: parsed without the general loop
        at = pos + len(_MESSAGE)  # the channel's length
        end = buf.find(b"\r\n", at)
        if end > 0 and buf[at] != 45:  # a nil ("$-1") or anything odd: the general parse below
            channel_at = end + 2
            channel_end = channel_at + int(buf[at:end])
            at = channel_end + 3  # the data's length, after "\r\n$"
            if len(buf) > at and buf[at - 1] == 36:
                end = buf.find(b"\r\n", at)
                if end > 0 and buf[at] != 45:
                    data_end = end + 2 + int(buf[at:end])
                    if len(buf) >= data_end + 2:
                        return [b"message", bytes(buf[channel_at:channel_end]), bytes(buf[end + 2:data_end])], \
                            data_end + 2
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
        items: list[Any] = []
        size = len(buf)
        for _ in range(n):
            if pos < size and buf[pos] == 36:  # a bulk string (pub/sub messages are arrays of them): inline
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    raise _Incomplete
                length = int(buf[pos + 1:end])
                if length < 0:
                    items.append(None)
                    pos = end + 2
                    continue
                start = end + 2
                pos = start + length + 2
                if size < pos:
                    raise _Incomplete
                items.append(bytes(buf[start:pos - 2]))
            else:
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
