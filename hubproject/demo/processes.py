"""Demo processes: a counter per name and a chat room per name, both pushing to the browser tabs on them.

Each pushes ``{"type": "process.push", "data": ...}`` to its own Channels group
(``self.channel_group``), which every ``ProcessConsumer`` of it joined
(hubproject/demo/consumers.py): every open tab sees a change at once, on any
web server, and a new activation after a move or a takeover pushes to the same group.
"""
import logging
import uuid

from processhub import HordeProcess

logger = logging.getLogger(__name__)


def pushed(kind: str, **data) -> dict:
    """The Channels message a ProcessConsumer forwards to its socket as ``{"push": {"kind": ..., ...}}``."""
    return {"type": "process.push", "data": {"kind": kind, **data}}

HISTORY = 50  # messages a room keeps in memory and hands over


class Counter(HordeProcess):
    """Counts; state survives a move through the handoff callbacks (not a crash: it is kept in memory only)."""

    restart = "transient"

    async def init(self, arg):
        self.count = 0

    async def handle_continue(self):
        await self.announce()  # tabs on this counter learn its new node and epoch after a move or a takeover

    async def handle_call(self, message):
        op = message.get("op") if isinstance(message, dict) else message
        if op == "incr":
            self.count += int(message.get("by", 1))
            await self.announce()
        elif op == "crash":
            raise RuntimeError("asked to crash")
        return self.state()

    async def handle_cast(self, message):
        self.count += 1
        await self.announce()

    async def begin_handoff(self):
        return {"count": self.count}

    async def end_handoff(self, state):
        self.count = state["count"]

    def state(self):
        return {"count": self.count, "node": self.node, "epoch": self.epoch}

    async def announce(self):
        try:
            await self.group_send(self.channel_group, pushed("count", **self.state()))
        except Exception:  # noqa: BLE001 - a lost push costs a stale tab, never the counter (pushes are hints)
            logger.warning("demo: push from counter %r failed", self.process_id, exc_info=True)


class ChatRoom(HordeProcess):
    """A chat room: keeps its last messages and pushes every new one to the room's tabs.

    Every message is written to the database with ``fenced()`` before it is
    acknowledged, so a takeover after a crash (``init`` reads them back) loses
    none, and an activation that lost the room can never write one; moves hand
    the history over with ``begin_handoff``/``end_handoff``. The handlers are
    plain ``def``s: they run in a worker thread, where the ORM works directly.
    """

    def init(self, arg):
        from .models import RoomMessage

        rows = RoomMessage.objects.filter(room=self.process_id).order_by("-id")[:HISTORY]
        self.messages = [row.as_dict() for row in reversed(rows)]

    async def handle_continue(self):
        # Open tabs learn where the room runs now (after a move or a takeover).
        try:
            await self.group_send(self.channel_group, pushed("room", **self.where()))
        except Exception:  # noqa: BLE001 - the message is stored; a lost push costs a stale tab, never the room
            logger.warning("demo: push from room %r failed", self.process_id, exc_info=True)

    def handle_call(self, message):
        if isinstance(message, dict) and message.get("op") == "post":
            return {"message": self.post(message), **self.where()}
        return {"messages": self.messages, **self.where()}

    def post(self, message):
        from .models import RoomMessage

        msg_id = str(message.get("id") or uuid.uuid4().hex)[:64]
        known = next((m for m in reversed(self.messages) if m["id"] == msg_id), None)
        if known is not None:
            return known  # a tab retrying after a timeout: stored once, pushed once
        text = str(message.get("text", "")).strip()[:500]
        user = str(message.get("user") or "guest")[:150]
        with self.fenced():  # commits only while this activation owns the room (Fenced otherwise)
            row, _ = RoomMessage.objects.get_or_create(
                room=self.process_id, msg_id=msg_id,
                defaults={"user": user, "text": text, "node": self.node, "epoch": self.epoch})
        new = row.as_dict()
        self.messages = [*self.messages, new][-HISTORY:]
        try:
            self.group_send_sync(self.channel_group, pushed("message", message=new))
        except Exception:  # noqa: BLE001 - stored and acknowledged; the other tabs get it with their next history
            logger.warning("demo: push from room %r failed", self.process_id, exc_info=True)
        return new

    def begin_handoff(self):
        return {"messages": self.messages}

    def end_handoff(self, state):
        # The handed-over history is at least as recent as what init() read: every post is written before
        # it is acknowledged.
        self.messages = list(state.get("messages") or self.messages)

    def where(self):
        return {"node": self.node, "epoch": self.epoch}
