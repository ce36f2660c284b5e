"""The node's inbox: every envelope that reaches its channel, checked, then dispatched by kind.

``receive`` runs in the transport's callback on the node's loop and must be
quick: it decodes and validates (DESIGN I8: only JSON data, only registered
class labels, sizes bounded), checks the lease (I3), and hands the message to
the one small method that handles its kind (``handlers``, like channels'
``get_handler_name``/``dispatch``). Anything slower becomes a task. A bad
message is answered with an invalid-message error when it says where to, and
logged at most once per interval: it never stops the node.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from django.db import DatabaseError

from .. import wire
from ..exceptions import InvalidMessage, ProcessHubError, ProcessUnavailable, UnknownProcessClass
from ..logs import Throttled
from .activation import Call, Cast, StopRequest
from .host import NodeParts

logger = logging.getLogger(__name__)

Key = tuple[str, str]

# Items in one START_MANY or STOP_MANY message (clients send at most this many per message).
MAX_ITEMS = 2000

_NO_MESSAGE = object()


class Inbox:
    def __init__(self, node: NodeParts) -> None:
        self.node = node
        self.rejected = 0  # messages refused as malformed (a metric)
        self._log = Throttled(logger)
        # Kinds addressed to one process carry its label and id ("l", "p").
        self.handlers: dict[str, Callable[[dict, Key], None]] = {
            wire.START: self.on_start,
            wire.START_MANY: self.on_start_many,
            wire.STOP_MANY: self.on_stop_many,
            wire.CALL: self.on_call,
            wire.CAST: self.on_cast,
            wire.STOP: self.on_stop,
            wire.MOVE: self.on_move,
            wire.DRAIN: self.on_drain,
            wire.UNDRAIN: self.on_undrain,
            wire.ACTIVATE: self.on_activate,
            wire.REBALANCE: self.on_rebalance,
        }

    def receive(self, data: bytes) -> None:
        node = self.node
        try:
            env = wire.loads(data, node.hs.MAX_MESSAGE_BYTES)
            kind = env["t"]
            handler = self.handlers.get(kind)
            if handler is None:
                raise InvalidMessage(f"unknown envelope kind {kind!r}")
            reply_to, corr = env.get("r"), env.get("id")
            if reply_to is not None and not isinstance(reply_to, str) or corr is not None and not isinstance(corr, str):
                raise InvalidMessage("'r' and 'id' must be strings")
            key: Key = ("", "")
            if kind in wire.ADDRESSED:
                label, pid = env.get("l"), env.get("p")
                if isinstance(label, str) and isinstance(pid, str):
                    key = (label, pid)
                else:
                    key = (wire.field(env, "l", str), wire.field(env, "p", str))  # raises, naming the field
        except InvalidMessage as exc:
            self.rejected += 1
            self._log.warning("malformed", "processhub: node %s rejected a malformed message: %s", node.name, exc)
            self._reply_invalid(data, str(exc))
            return
        if kind == wire.ACTIVATE:
            handler(env, key)  # a hint: harmless, and the lease is checked where it is acted on
            return
        if not node.lease_valid():
            if reply_to:
                self._spawn(node.reply_error(reply_to, corr, wire.E_FENCED, "node has no valid lease"))
            node.fence_soon("lease ran out")
            return
        handler(env, key)

    # ------------------------------------------------------------ one method per kind

    def on_start(self, env: dict, key: Key) -> None:
        self._spawn(self._start(env, key))

    async def _start(self, env: dict, key: Key) -> None:
        await self.node.reply(env.get("r"), env.get("id"), await self._start_one(env, key))

    async def _start_one(self, env: dict, key: Key) -> dict:
        """One start, answered as an envelope; a start that fails the node's checks gets a named error."""
        node = self.node
        try:
            return await node.starts.start(key, node.starts.spec(key, env))
        except (InvalidMessage, UnknownProcessClass) as exc:
            code = wire.E_UNKNOWN_CLASS if isinstance(exc, UnknownProcessClass) else wire.E_INVALID
            self._log.warning("start-refused", "processhub: node %s refused a start: %s", node.name, exc)
            return {"ok": False, "err": code, "msg": str(exc)}

    def on_start_many(self, env: dict, key: Key) -> None:
        self._spawn(self._start_many(env))

    async def _start_many(self, env: dict) -> None:
        """Many starts of one class in one message: they share the batches of the group commit."""
        reply_to, corr = env.get("r"), env.get("id")
        label, items = env.get("l"), env.get("items")
        if not isinstance(label, str) or not isinstance(items, list) or len(items) > MAX_ITEMS or not all(
                isinstance(i, list) and len(i) == 2 and isinstance(i[0], str) for i in items):
            await self.node.reply_error(reply_to, corr, wire.E_INVALID, "start_many needs 'l' and 'items': "
                                        f"at most {MAX_ITEMS} [process id, argument] pairs")
            return
        shared = {k: env[k] for k in ("tg", "md", "tk", "g") if k in env}
        results = await asyncio.gather(*(self._start_one({**shared, "a": arg}, (label, pid)) for pid, arg in items))
        await self.node.reply(reply_to, corr, {"ok": True, "results": dict(zip((i[0] for i in items), results,
                                                                               strict=True))})

    def on_stop_many(self, env: dict, key: Key) -> None:
        self._spawn(self._stop_many(env))

    async def _stop_many(self, env: dict) -> None:
        """Stop many processes of one class that run here; answers which were stopped."""
        node = self.node
        reply_to, corr = env.get("r"), env.get("id")
        label, pids = env.get("l"), env.get("pids")
        if not isinstance(label, str) or not isinstance(pids, list) or len(pids) > MAX_ITEMS:
            await node.reply_error(reply_to, corr, wire.E_INVALID,
                                   f"stop_many needs 'l' and at most {MAX_ITEMS} 'pids'")
            return
        loop = asyncio.get_running_loop()
        waiting: dict[str, asyncio.Future] = {}
        for pid in pids:
            act = node.activations.get((label, pid)) if isinstance(pid, str) else None
            if act is not None and not act.busy:
                act.busy = True
                fut = waiting[pid] = loop.create_future()
                act.post(StopRequest(future=fut))
        done = await asyncio.gather(*waiting.values())
        stopped = [pid for pid, ok in zip(waiting, done, strict=True) if ok]
        await node.reply(reply_to, corr, {"ok": True, "stopped": stopped})

    def on_call(self, env: dict, key: Key) -> None:
        act = self.node.activations.get(key)
        if act is None or act.busy:
            self._target(env, key)  # answers "not here"
            return
        reply_to, corr = env.get("r"), env.get("id")
        message = env.get("m", _NO_MESSAGE)
        if message is _NO_MESSAGE:
            self._spawn(self.node.reply_error(reply_to, corr, wire.E_INVALID, "call without 'm'"))
            return
        ttl = env.get("ttl")
        if ttl is None:
            deadline = None
        elif type(ttl) is float or type(ttl) is int:  # JSON numbers: no bool, no subclass
            if not ttl > 0:
                self._spawn(self.node.reply_error(reply_to, corr, wire.E_INVALID, "'ttl' must be a positive number"))
                return
            deadline = time.monotonic() + ttl
        else:
            # A caller sends its remaining time; anything else would be silently dropped later.
            self._spawn(self.node.reply_error(reply_to, corr, wire.E_INVALID, "'ttl' must be a positive number"))
            return
        act.post(Call(message, reply_to, corr, deadline))

    def on_cast(self, env: dict, key: Key) -> None:
        act = self.node.activations.get(key)
        if act is None or act.busy:
            self._target(env, key)  # dropped (logged at debug level); a cast expects no answer
            return
        act.post(Cast(env.get("m")))

    def on_stop(self, env: dict, key: Key) -> None:
        act = self._target(env, key)
        if act is not None:
            act.busy = True
            act.post(StopRequest(env.get("r"), env.get("id")))

    def on_move(self, env: dict, key: Key) -> None:
        act = self._target(env, key)
        if act is not None:
            self._spawn(self._move(act, env))

    async def _move(self, act: Any, env: dict) -> None:
        reply_to, corr = env.get("r"), env.get("id")
        to = env.get("to")
        if to is not None and not isinstance(to, str):
            await self.node.reply_error(reply_to, corr, wire.E_INVALID, "'to' must be a node id")
            return
        refused = await self.node.handoff.move_one(act, to, env.get("e"), reply_to, corr)
        if refused is not None:
            await self.node.reply_error(reply_to, corr, *refused)

    def on_drain(self, env: dict, key: Key) -> None:
        self._spawn(self._drain(env, undrain=False))

    def on_undrain(self, env: dict, key: Key) -> None:
        self._spawn(self._drain(env, undrain=True))

    async def _drain(self, env: dict, undrain: bool) -> None:
        node = self.node
        reply_to, corr = env.get("r"), env.get("id")
        try:
            if undrain:
                await node.handoff.undrain()
                count = 0
            else:
                count = await node.handoff.drain_in_place()
        except ProcessUnavailable as exc:
            await node.reply_error(reply_to, corr, wire.E_UNAVAILABLE, str(exc))
            return
        except DatabaseError as exc:
            await node.reply_error(reply_to, corr, wire.E_UNAVAILABLE, f"database: {type(exc).__name__}")
            return
        await node.reply(reply_to, corr, {"ok": True, "n": count})

    def on_rebalance(self, env: dict, key: Key) -> None:
        self.node.rebalancer.ask()
        self.node.reconciler.wake()
        if env.get("r"):
            self._spawn(self.node.reply(env.get("r"), env.get("id"), {"ok": True}))

    def on_activate(self, env: dict, key: Key) -> None:
        ids = env.get("ids")
        if isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            self.node.reconciler.hint(ids)
        else:
            self.node.reconciler.wake()

    # ------------------------------------------------------------ plumbing

    def _target(self, env: dict, key: Key) -> Any:
        """The activation a message is for, or None (answered "not here" when it expects an answer)."""
        node = self.node
        act = node.activations.get(key)
        if act is not None and not act.busy:
            return act
        reply_to = env.get("r")
        if reply_to:
            data: dict[str, Any] = {"ok": False, "err": wire.E_NOT_HERE,
                                    "msg": f"{key[0]} {key[1]!r} is not running on {node.name}"}
            if act is not None:
                data["moving"] = True  # stopping, moving or passivating: the caller waits (bounded by its timeout)
            self._spawn(node.reply(reply_to, env.get("id"), data))
        else:
            logger.debug("processhub: %s to %s %r dropped: not running on %s", env.get("t"), key[0], key[1],
                         node.name)
        return None

    def _reply_invalid(self, data: bytes, msg: str) -> None:
        # Answer a malformed request when it says where to, so its sender learns why.
        target = wire.reply_address(data, self.node.hs.MAX_MESSAGE_BYTES)
        if target is not None:
            self._spawn(self.node.reply_error(target[0], target[1], wire.E_INVALID, msg))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        if isinstance(exc, ProcessHubError):
            logger.warning("processhub: handling a message failed: %r", exc)
        else:
            logger.error("processhub: handling a message failed", exc_info=exc)
