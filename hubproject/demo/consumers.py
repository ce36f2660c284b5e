"""The demo's WebSocket consumers: one socket per tab on a counter or a chat room (see processhub.consumers)."""
from processhub.consumers import ProcessConsumer
from processhub.exceptions import InvalidMessage

from .processes import ChatRoom, Counter


class CounterConsumer(ProcessConsumer):
    """``/ws/counter/<name>/``: get, incr and crash are calls; poke is a cast."""

    process_class = Counter
    call_ops = {"get", "incr", "crash"}
    cast_ops = {"poke"}

    def message_for(self, frame):
        return {"op": frame["op"]}  # nothing else from the browser reaches the counter (no "by": 10**9)


class RoomConsumer(ProcessConsumer):
    """``/ws/room/<name>/``: history and post; the room pushes every new message to all its sockets."""

    process_class = ChatRoom
    call_ops = {"history", "post"}

    def message_for(self, frame):
        if frame["op"] == "history":
            return {"op": "history"}
        text = frame.get("text")
        if not isinstance(text, str) or not text.strip():
            raise InvalidMessage("a post needs a non-empty text")
        return {"op": "post", "text": text[:500], "id": str(frame.get("id") or "")[:64], "user": self.user_name(frame)}

    def user_name(self, frame) -> str:
        """A logged-in user's name; otherwise the nickname the tab chose (marked as such), or "guest"."""
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            return user.get_username()
        nick = str(frame.get("user") or "").strip()[:40]
        return f"{nick} (guest)" if nick else "guest"
