"""The process classes the benchmark starts: an echo with a cast counter, two that passivate when idle, and a pusher
for the fan-out figure."""
import asyncio
import time
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


class Sleepy(Bench):
    """Passivated after two seconds without a message; the next call revives it (the reactivation figure).

    Not shorter: every node scans all its activations every half of the shortest idle_timeout of the registered
    classes, so 0.5 s would add a scan of each node's activations four times a second to every other figure.
    """

    idle_timeout = 2.0


class Dozy(Bench):
    """Passivated after its node's ``IDLE_TIMEOUT`` setting (the memory-after-passivation figure sets it on the one
    node that runs these, long enough for all of them to be active at once)."""


class Fanout(HordeProcess):
    """Pushes numbered messages, stamped with ``time.monotonic()`` just before each send, to its Channels group."""

    async def handle_call(self, message: Any) -> Any:
        phase, n, gap = message["phase"], int(message["n"]), float(message.get("gap", 0))
        group = self.channel_group
        for i in range(n):
            await self.group_send(group, {"type": "process.push", "data": {"p": phase, "i": i, "t": time.monotonic()}})
            if gap:
                await asyncio.sleep(gap)
        return n
