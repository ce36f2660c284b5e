"""WebSocket consumers for processes: each JSON frame from the browser becomes a call, pushes come back.

One consumer per browser tab talks to one process::

    # myapp/consumers.py
    from processhub.consumers import ProcessConsumer
    from .processes import ChatRoom

    class RoomConsumer(ProcessConsumer):
        process_class = ChatRoom          # the argument is the URL kwarg "name" (arg_kwarg)
        call_ops = {"history", "post"}    # None: any op reaches the process
        cast_ops = {"typing"}             # sent with acast (no reply from the process)

    # routing.py: path("ws/room/<str:name>/", RoomConsumer.as_asgi())

The browser sends ``{"op": "post", "text": "hi", "ref": 7}``; the process's
``handle_call`` receives the frame without ``ref``, and its return value comes
back as ``{"reply": ..., "ref": 7}``. Every failure is an error frame, never a
dropped socket: ``{"error": "ProcessCrashed", "message": ..., "ref": 7}``. The
consumer joins the process's Channels group (``HordeProcess.channel_group``),
so ``await self.group_send(self.channel_group, {"type": "process.push", "data":
...})`` inside the process reaches every tab as ``{"push": ...}``, on whichever
web server the tab is connected to.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Collection
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.core.exceptions import ImproperlyConfigured, PermissionDenied

from . import push
from .exceptions import InvalidArgument, InvalidMessage, ProcessHubError
from .masking import mask_text

logger = logging.getLogger(__name__)

GENERIC_ERROR = "The process could not answer this request; please try again."

# WebSocket close codes (4000-4999 are the application's): the handshake is refused with these.
CLOSE_FORBIDDEN = 4403
CLOSE_BAD_ARGUMENT = 4400


class UnknownOp(InvalidMessage):
    """A frame whose op the consumer does not forward (in neither ``call_ops`` nor ``cast_ops``)."""


class Busy(ProcessHubError):
    """Too many frames of one socket are waiting for the process (``max_pending``); the frame was dropped."""


class ProcessConsumer(AsyncJsonWebsocketConsumer):
    """A WebSocket bound to one process: frames become ``acall``/``acast``, pushes go to the socket.

    Frames of one socket reach the process in the order they were sent, one at a
    time, while pushes keep flowing to the socket meanwhile.
    """

    process_class: Any = None  # the HordeProcess subclass
    arg_kwarg = "name"  # the URL kwarg that get_process_arg() reads by default
    call_ops: Collection[str] | None = None  # ops sent with acall; None: every op not in cast_ops
    cast_ops: Collection[str] = ()  # ops sent with acast; their reply frame carries "reply": null
    call_timeout: float | None = None  # None: the CALL_TIMEOUT setting
    start_process = True  # False: a frame to a process that does not run gets ProcessNotRunning
    max_pending = 32  # frames of one socket waiting for the process; more get a Busy error frame

    process_arg: Any
    process_group: str | None

    # ------------------------------------------------------------------ hooks

    def get_process_arg(self) -> Any:
        """The argument of the process this socket talks to (may be async); raise PermissionDenied to refuse."""
        return self.scope["url_route"]["kwargs"][self.arg_kwarg]

    def message_for(self, frame: dict[str, Any]) -> Any:
        """The message the process receives for ``frame`` (may be async); raise PermissionDenied to refuse it."""
        return {k: v for k, v in frame.items() if k != "ref"}

    def describe_error(self, exc: BaseException) -> dict[str, Any]:
        """The error frame's fields for an error of the process or the hub: its name; its text for staff only.

        A remote error text can name code or data that visitors have no business
        seeing (as on the demo's pages); staff get it with passwords masked.
        """
        fields = {"error": type(exc).__name__, "message": GENERIC_ERROR}
        if isinstance(exc, ProcessHubError) and getattr(self.scope.get("user"), "is_staff", False):
            fields["message"] = mask_text(str(exc.args[0]) if exc.args else "")
            exc_type = getattr(exc, "exc_type", "")  # ProcessCrashed: the remote exception's class name
            if exc_type:
                fields["exc_type"] = exc_type
        return fields

    # ------------------------------------------------------------------ connection

    async def connect(self) -> None:
        cls = self.process_class
        if cls is None or not getattr(cls, "label", ""):
            raise ImproperlyConfigured(f"{type(self).__qualname__}.process_class must name a registered HordeProcess")
        self.process_group = None
        try:
            arg = self.get_process_arg()
            self.process_arg = await arg if inspect.isawaitable(arg) else arg
            group = push.channel_group(cls.label, cls.process_id(self.process_arg))
        except PermissionDenied:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        except InvalidArgument as exc:
            logger.info("processhub: refused a socket for %s: %s", cls.label, exc)
            await self.close(code=CLOSE_BAD_ARGUMENT)
            return
        self._frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        if self.channel_layer is None:
            logger.warning("processhub: %s has no channel layer (CHANNEL_LAYERS): the process cannot push to it",
                           type(self).__qualname__)
        else:
            push.bind_layer_loop(self.channel_layer)
            await self.channel_layer.group_add(group, self.channel_name)
            self.process_group = group
        await self.accept()

    async def disconnect(self, code: int) -> None:
        worker = getattr(self, "_worker", None)
        if worker is not None:
            worker.cancel()
        if getattr(self, "process_group", None) and self.channel_layer is not None:
            await self.channel_layer.group_discard(self.process_group, self.channel_name)

    # ------------------------------------------------------------------ frames

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        # Not AsyncJsonWebsocketConsumer's: a frame that is not JSON gets an error frame, not a closed socket.
        try:
            frame = self.parse(text_data)
        except InvalidMessage as exc:
            await self.send_json(refusal(exc, None))
            return
        if self._frames.qsize() >= self.max_pending:
            await self.send_json(refusal(Busy(f"more than {self.max_pending} frames wait for the process"),
                                         frame.get("ref")))
            return
        self._frames.put_nowait(frame)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._serve_frames())

    @staticmethod
    def parse(text_data: str | None) -> dict[str, Any]:
        if text_data is None:
            raise InvalidMessage("frames must be JSON text, not binary")
        try:
            frame = json.loads(text_data)
        except ValueError as exc:
            raise InvalidMessage(f"a frame is not JSON: {exc}") from None
        if not isinstance(frame, dict):
            raise InvalidMessage('a frame must be a JSON object such as {"op": "get"}')
        return frame

    async def _serve_frames(self) -> None:
        while not self._frames.empty():
            frame = self._frames.get_nowait()
            await self.send_json(await self.answer(frame))

    async def answer(self, frame: dict[str, Any]) -> dict[str, Any]:
        """The frame that answers ``frame``: its reply or an error, with its ``ref``."""
        ref = frame.get("ref")
        cls = self.process_class
        try:
            op = frame.get("op")
            if not isinstance(op, str) or not op:
                raise InvalidMessage('a frame needs an "op" (a string)')
            if op not in self.cast_ops and self.call_ops is not None and op not in self.call_ops:
                raise UnknownOp(f"unknown op {op[:100]!r}")
            message = self.message_for(frame)
            if inspect.isawaitable(message):
                message = await message
        except (InvalidMessage, PermissionDenied) as exc:
            return refusal(exc, ref)  # the consumer's own words: safe to show
        except Exception as exc:  # noqa: BLE001 - a bug in message_for(): logged, answered, the socket stays open
            logger.exception("processhub: %s.message_for() failed", type(self).__qualname__)
            return {**self.describe_error(exc), "ref": ref}
        start = self.start_process
        try:
            if op in self.cast_ops:
                await cls.acast(self.process_arg, message, start=start)
                return {"reply": None, "ref": ref}
            reply = await cls.acall(self.process_arg, message, timeout=self.call_timeout, start=start)
            return {"reply": reply, "ref": ref}
        except ProcessHubError as exc:
            return {**self.describe_error(exc), "ref": ref}
        except Exception as exc:  # noqa: BLE001 - logged and answered: the socket stays open
            logger.exception("processhub: %s failed on a frame for %s", type(self).__qualname__, cls.label)
            return {**self.describe_error(exc), "ref": ref}

    # ------------------------------------------------------------------ pushes

    async def process_push(self, event: dict[str, Any]) -> None:
        """``{"type": "process.push", "data": ...}`` sent to the group: ``{"push": data}`` on the socket."""
        await self.send_json({"push": event.get("data")})


def refusal(exc: BaseException, ref: Any) -> dict[str, Any]:
    """The error frame of a frame the consumer refused before it reached the process."""
    return {"error": type(exc).__name__, "message": str(exc), "ref": ref}
