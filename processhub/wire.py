"""What travels between clients and nodes: JSON envelopes, their validation, and id checks.

Pure functions, no Django. Arguments and messages are JSON data only (DESIGN I8);
anything else is refused *before* it leaves the caller.
"""
from __future__ import annotations

import json
from typing import Any

from .exceptions import InvalidArgument, InvalidMessage

# Envelope kinds, client -> node.
START, CALL, CAST, STOP, MOVE, ACTIVATE = "start", "call", "cast", "stop", "move", "activate"
# Node -> client.
REPLY = "reply"
# Registry hints on the events channel.
EVENT = "event"

# Error codes carried in failed replies; the client maps each to an exception.
E_CRASHED = "crashed"
E_NOT_HERE = "not_here"  # no such activation on this node (moved, stopped, not yet started)
E_FENCED = "fenced"  # this node lost its lease; ask again elsewhere
E_INVALID = "invalid"
E_UNKNOWN_CLASS = "unknown_class"
E_NOT_RUNNING = "not_running"
E_UNAVAILABLE = "unavailable"

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def dumps(obj: Any) -> bytes:
    return _encoder.encode(obj).encode()


def loads(data: bytes | str) -> dict:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidMessage(f"not JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("t"), str):
        raise InvalidMessage("an envelope must be a JSON object with a string 't'")
    return obj


def check_data(value: Any, what: str, max_bytes: int, exc: type[InvalidArgument] = InvalidMessage) -> None:
    """Refuse anything that would not survive a JSON round trip unchanged in type."""
    try:
        size = len(_encoder.encode(value))
    except (TypeError, ValueError) as e:
        raise exc(f"{what} is not JSON-serializable: {e}") from None
    if size > max_bytes:
        raise exc(f"{what} is {size} bytes, more than MAX_MESSAGE_BYTES={max_bytes}")


def check_process_id(pid: Any, max_length: int) -> str:
    if not isinstance(pid, str):
        raise InvalidArgument(f"process_id() must return a str, not {type(pid).__name__}")
    if not pid or not pid.strip():
        raise InvalidArgument("process id must be a non-empty string")
    if len(pid) > max_length:
        raise InvalidArgument(f"process id is {len(pid)} characters, more than MAX_ID_LENGTH={max_length}")
    if "\x00" in pid:
        raise InvalidArgument("process id must not contain NUL characters")
    return pid


def field(env: dict, name: str, kind: type | tuple[type, ...]) -> Any:
    """A required envelope field of the given type, or InvalidMessage."""
    value = env.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise InvalidMessage(f"envelope field {name!r} is missing or of the wrong type")
    return value
