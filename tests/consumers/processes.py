"""Processes the consumer tests talk to (explicit labels: this package is not an installed app)."""
import asyncio

from processhub import HordeProcess


class Pusher(HordeProcess):
    """Echoes, crashes, sleeps or pushes to its own group on request (async callbacks)."""

    label = "consumertest.Pusher"

    async def init(self, arg):
        self.casts = 0

    async def handle_call(self, message):
        op = message.get("op")
        if op == "crash":
            raise ValueError("boom requested")
        if op == "sleep":
            await asyncio.sleep(float(message["s"]))
        if op == "push":
            await self.group_send(self.channel_group, {"type": "process.push", "data": message["data"]})
        return {"echo": message, "casts": self.casts, "node": self.node}

    async def handle_cast(self, message):
        self.casts += 1
        if "push_after" in message:  # a push long after any reply: nothing else wakes the consumer's loop
            await asyncio.sleep(message["push_after"])
            await self.group_send(self.channel_group, {"type": "process.push", "data": "later"})


class SyncPusher(HordeProcess):
    """The same push from a plain ``def`` handler (a worker thread): ``group_send_sync``."""

    label = "consumertest.SyncPusher"

    def handle_call(self, message):
        self.group_send_sync(self.channel_group, {"type": "process.push", "data": message["data"]})
        return "pushed"
