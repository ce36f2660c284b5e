"""The process class the benchmark starts: an echo with a cast counter and a little introspection."""
from typing import Any

from processhub import HordeProcess


class Bench(HordeProcess):
    """Idle until asked; ``init`` stores nothing, so memory figures show processhub's own cost."""

    casts = 0

    async def handle_call(self, message: Any) -> Any:
        if isinstance(message, dict):
            op = message.get("op")
            if op == "where":
                return self.node
            if op == "stats":
                return {"casts": self.casts, "slots": len(self._activation.host.activations), "node": self.node}
        return message

    async def handle_cast(self, message: Any) -> None:
        self.casts += 1

