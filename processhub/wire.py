"""What travels between clients and nodes: JSON envelopes, their validation, and id checks.

Pure functions, no Django. Arguments and messages are JSON data only (DESIGN I8);
anything else is refused *before* it leaves the caller.
"""
from __future__ import annotations

import json
from typing import Any

from .exceptions import InvalidArgument, InvalidMessage


def events_channel(prefix: str) -> str:
    """The hub's one channel of registry hints (node up/down, process registered/unregistered).

    Named like the framed channels: every reader is a processhub transport, so bursts travel as frames.
    """
    return f"{prefix}.events.framed"


# Envelope kinds, client -> node.
START, CALL, CAST, STOP, MOVE, ACTIVATE = "start", "call", "cast", "stop", "move", "activate"
# Many processes of one class at once ("l", "items": [[process id, argument], ...]).
START_MANY, STOP_MANY = "start_many", "stop_many"
# Admin -> node: take no new processes, hand every process away, keep running; and back (no "l"/"p").
DRAIN, UNDRAIN = "drain", "undrain"
# Admin -> node: one rebalancing sweep (hub.rebalance on a passive cluster).
REBALANCE = "rebalance"
# The kinds addressed to one process: they carry its class label "l" and id "p".
ADDRESSED = frozenset({START, CALL, CAST, STOP, MOVE})
# Node -> client.
REPLY = "reply"
# Registry hints on the events channel.
EVENT = "event"
# An event carrying others ("items": [event, ...]): the registered/unregistered events of one loop turn of a node.
EVENT_BATCH = "batch"

# Error codes carried in failed replies; the client maps each to an exception.
E_CRASHED = "crashed"
E_NOT_HERE = "not_here"  # no such activation on this node (moved, stopped, not yet started)
E_FENCED = "fenced"  # this node lost its lease; ask again elsewhere
E_INVALID = "invalid"
E_UNKNOWN_CLASS = "unknown_class"
E_NOT_RUNNING = "not_running"
E_UNAVAILABLE = "unavailable"
E_AT_CAPACITY = "at_capacity"  # this node runs MAX_PROCESSES_PER_NODE already; try another

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
# What ``_encoder.encode`` builds for every call (JSONEncoder.iterencode), built once: the C encoder with the
# same options. Without circular-reference markers (a shared markers dict would be state shared between
# threads): a cycle ends in RecursionError instead of ValueError, refused by check_data all the same.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_c_encode = None if _c_make_encoder is None else _c_make_encoder(
    None, _encoder.default, json.encoder.encode_basestring, None, ":", ",", False, False, False)
_encode_str = json.encoder.encode_basestring


def dumps(obj: Any) -> bytes:
    # A lone surrogate (valid in a Python str, and in JSON as an escape) cannot be UTF-8:
    # write it as its JSON escape, so it round-trips instead of failing the send.
    if _c_encode is None:
        return _encoder.encode(obj).encode("utf-8", "backslashreplace")
    if isinstance(obj, str):
        return _encode_str(obj).encode("utf-8", "backslashreplace")
    return "".join(_c_encode(obj, 0)).encode("utf-8", "backslashreplace")


# What an envelope may add around the largest argument or message it carries.
ENVELOPE_OVERHEAD = 4096
# The deepest nesting of arrays and objects a received envelope may have.
MAX_DEPTH = 64


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON data")


# One decoder for every message: ``json.loads(data, parse_constant=...)`` builds a decoder and its scanner per
# call. Shared by threads like json's own default decoder (the one json.loads uses without arguments).
_decode = json.JSONDecoder(parse_constant=_refuse_constant).decode


def loads(data: bytes | str, max_bytes: int | None = None) -> dict:
    """Decode one received envelope, refusing what a sender's checks would have refused (DESIGN I8).

    Bounded work whatever arrives: the size is checked before parsing, NaN and
    Infinity are refused, and nesting deeper than MAX_DEPTH is refused (counted
    only when the text holds that many brackets at all, so small messages pay nothing).
    """
    if max_bytes is not None and len(data) > max_bytes + ENVELOPE_OVERHEAD:
        raise InvalidMessage(f"envelope of {len(data)} bytes is larger than MAX_MESSAGE_BYTES allows")
    try:
        if type(data) is bytes and data[:1] == b"{" and data[1:2] != b"\x00":
            # What json.loads does with such bytes (json.detect_encoding says UTF-8 for them), minus the decoder
            # it would build for this one call.
            obj = _decode(data.decode("utf-8", "surrogatepass"))
        else:
            obj = json.loads(data, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidMessage(f"not JSON data: {str(exc)[:200]}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("t"), str):
        raise InvalidMessage("an envelope must be a JSON object with a string 't'")
    if len(data) > MAX_DEPTH:  # fewer characters cannot hold more than MAX_DEPTH brackets
        raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
        if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and depth(obj) > MAX_DEPTH:
            raise InvalidMessage(f"envelope nests deeper than {MAX_DEPTH} levels")
    return obj


def depth(value: Any) -> int:
    """How deeply arrays and objects nest in ``value`` (iterative: any depth is safe)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item)
    return deepest


def _read_constant_as_none(name: str) -> None:
    return None


def reply_address(data: bytes, max_bytes: int) -> tuple[str, str] | None:
    """Where to answer a message that failed validation ("r", "id"), if it can be read at all."""
    if len(data) > max_bytes + ENVELOPE_OVERHEAD:
        return None
    try:
        # NaN and Infinity are read here (as None): a message refused for carrying one is still answered.
        env = json.loads(data, parse_constant=_read_constant_as_none)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(env, dict):
        return None
    reply_to, corr = env.get("r"), env.get("id")
    if isinstance(reply_to, str) and isinstance(corr, str):
        return reply_to, corr
    return None


def check_data(value: Any, what: str, max_bytes: int, exc: type[InvalidArgument] = InvalidMessage) -> None:
    """Refuse anything that would not survive a JSON round trip unchanged in type."""
    try:
        size = len(dumps(value))
    except (TypeError, ValueError, RecursionError) as e:
        raise exc(f"{what} is not JSON-serializable: {e}") from None
    if size > max_bytes:
        raise exc(f"{what} is {size} bytes, more than MAX_MESSAGE_BYTES={max_bytes}")


def check_storable(value: Any, what: str, exc: type[InvalidArgument] = InvalidArgument) -> None:
    """Refuse strings the registry database cannot store: NUL characters and lone surrogates.

    For start arguments (stored as JSON): PostgreSQL rejects both, and one such row
    would fail the whole group-committed INSERT of every start batched with it.
    Iterative, so it copes with any depth ``check_data`` accepted.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise exc(f"{what} contains a NUL character, which the registry database cannot store")
            try:
                item.encode()
            except UnicodeEncodeError:
                raise exc(f"{what} contains a lone surrogate, which the registry database cannot store") from None
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def check_process_id(pid: Any, max_length: int) -> str:
    if not isinstance(pid, str):
        raise InvalidArgument(f"process_id() must return a str, not {type(pid).__name__}")
    if not pid or not pid.strip():
        raise InvalidArgument("process id must be a non-empty string")
    if len(pid) > max_length:
        raise InvalidArgument(f"process id is {len(pid)} characters, more than MAX_ID_LENGTH={max_length}")
    check_storable(pid, "process id")
    return pid


# Tags: short strings to find processes by; metadata: a small JSON object.
MAX_TAGS = 32
MAX_TAG_LENGTH = 100
MAX_METADATA_BYTES = 65536


def check_tags(tags: Any, exc: type[InvalidArgument] = InvalidArgument) -> tuple[str, ...]:
    """A tuple of distinct tags (order kept), or ``exc`` naming what is wrong."""
    if isinstance(tags, str) or not isinstance(tags, (list, tuple, set, frozenset)):
        raise exc(f"tags must be a sequence of strings, not {type(tags).__name__}")
    out: list[str] = []
    for tag in tags:
        if not isinstance(tag, str) or not tag or len(tag) > MAX_TAG_LENGTH:
            raise exc(f"a tag must be a non-empty string of at most {MAX_TAG_LENGTH} characters, not {tag!r:.60}")
        check_storable(tag, "tag", exc)
        if tag not in out:
            out.append(tag)
    if len(out) > MAX_TAGS:
        raise exc(f"{len(out)} tags, more than the {MAX_TAGS} allowed")
    return tuple(out)


def check_metadata(metadata: Any, exc: type[InvalidArgument] = InvalidArgument) -> dict:
    """A JSON object of at most MAX_METADATA_BYTES, or ``exc``."""
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise exc(f"metadata must be a JSON object (a dict with string keys), not {type(metadata).__name__}")
    check_data(metadata, "metadata", MAX_METADATA_BYTES, exc)
    check_storable(metadata, "metadata", exc)
    return metadata


def field(env: dict, name: str, kind: type | tuple[type, ...]) -> Any:
    """A required envelope field of the given type, or InvalidMessage."""
    value = env.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise InvalidMessage(f"envelope field {name!r} is missing or of the wrong type")
    return value
