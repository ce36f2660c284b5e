"""Demo processes: a counter per name and a chat room that keeps its last messages."""
from processhub import HordeProcess


class Counter(HordeProcess):
    """Counts; state survives a move through the handoff callbacks."""

    restart = "transient"

    async def init(self, arg):
        self.count = 0

    async def handle_call(self, message):
        op = message.get("op") if isinstance(message, dict) else message
        if op == "incr":
            self.count += int(message.get("by", 1))
        elif op == "crash":
            raise RuntimeError("asked to crash")
        return {"count": self.count, "node": self.node, "epoch": self.epoch}

    async def handle_cast(self, message):
        self.count += 1

    async def begin_handoff(self):
        return {"count": self.count}

    async def end_handoff(self, state):
        self.count = state["count"]


class ChatRoom(HordeProcess):
    """Keeps the last 50 messages of a room."""

    async def init(self, arg):
        self.messages = []

    async def handle_call(self, message):
        if isinstance(message, dict) and message.get("op") == "post":
            self.messages = (self.messages + [str(message.get("text", ""))[:500]])[-50:]
        return {"messages": self.messages, "node": self.node}
