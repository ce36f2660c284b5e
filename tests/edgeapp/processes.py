"""Processes for the node's edge paths: fenced writes under a pause, failing inits, handoff order, start counts."""
import json
import os
import time

from processhub import HordeProcess


def _redis():
    import redis

    return redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


class FencedSleeper(HordeProcess):
    """A plain ``def`` handler that writes inside ``fenced()`` and then holds the transaction open."""

    def handle_call(self, message):
        from processhub.models import Process

        if message.get("op") == "write_and_hold":
            with self.fenced():
                Process.objects.filter(label=self.label, process_id=self.process_id).update(
                    metadata={"written_by": self.node, "epoch": self.epoch, "value": message["value"]})
                time.sleep(float(message["hold"]))
            return "committed"
        return {"node": self.node, "epoch": self.epoch}


class FailOnce(HordeProcess):
    """``init`` raises under the epoch named in the argument (a takeover's), and works on the next one."""

    @classmethod
    def process_id(cls, arg):
        return str(arg["id"])

    def init(self, arg):
        if self.epoch == arg.get("fail_epoch"):
            raise RuntimeError(f"init refuses epoch {self.epoch}")

    def handle_call(self, message):
        return {"node": self.node, "epoch": self.epoch}


class LineLogger(HordeProcess):
    """Appends a line per event to the file named in the argument: init, and every step of a slow handler."""

    @classmethod
    def process_id(cls, arg):
        return str(arg["id"])

    def _line(self, what):
        with open(self.path, "a") as f:
            f.write(json.dumps({"t": time.time(), "epoch": self.epoch, "node": self.node, "pid": os.getpid(),
                                "what": what}) + "\n")

    def init(self, arg):
        self.path = arg["path"]
        self._line("init")

    def handle_call(self, message):
        if message.get("op") == "slow":
            for i in range(int(message["steps"])):
                self._line(f"step {i}")
                time.sleep(float(message.get("every", 0.2)))
            return "done"
        return {"node": self.node, "epoch": self.epoch}

    def handle_cast(self, message):
        self.handle_call(message)


class HandoffOrder(HordeProcess):
    """Hands over what happened before ``begin_handoff``; ``terminate`` records its own run in Redis."""

    @classmethod
    def process_id(cls, arg):
        return str(arg["id"])

    async def init(self, arg):
        self.key = arg["key"]
        self.log = ["init"]
        self.received = None

    async def begin_handoff(self):
        self.log.append("begin_handoff")
        return {"log": list(self.log)}

    async def end_handoff(self, state):
        self.received = state

    async def terminate(self, reason):
        self.log.append(f"terminate:{reason}")
        _redis().rpush(self.key, json.dumps({"epoch": self.epoch, "reason": reason, "log": self.log}))

    async def handle_call(self, message):
        return {"node": self.node, "epoch": self.epoch, "received": self.received}


class StartCounter(HordeProcess):
    """Counts its inits in Redis and carries a token through moves (exactly one start per move)."""

    @classmethod
    def process_id(cls, arg):
        return str(arg["id"])

    def init(self, arg):
        self.key = arg["key"]
        self.token = None
        _redis().hincrby(self.key, self.process_id, 1)

    def begin_handoff(self):
        return {"token": f"t-{self.process_id}"} if int(self.process_id[1:]) % 2 == 0 else None

    def end_handoff(self, state):
        self.token = state["token"]

    def handle_call(self, message):
        return {"node": self.node, "epoch": self.epoch, "token": self.token}


class Tagger(HordeProcess):
    """Shows and changes its own tags and metadata from inside."""

    async def handle_call(self, message):
        op = message.get("op")
        if op == "retag":
            await self.set_tags(message["tags"])
            await self.set_metadata(message["metadata"])
        elif op == "crash":
            raise RuntimeError("boom")
        return {"tags": list(self.tags), "metadata": self.metadata}


class Scheduler(HordeProcess):
    """A declared singleton: one cluster-wide scheduler (declared in node processes started with
    HUBTEST_AUTOSTART=1; tests in the test process declare it by setting ``autostart``)."""

    autostart = ["cron"] if os.environ.get("HUBTEST_AUTOSTART") else []

    async def init(self, arg):
        self.ticks = 0

    async def handle_call(self, message):
        return {"node": self.node, "epoch": self.epoch}


class Member(HordeProcess):
    """Joins the groups named in its argument; answers group calls with where it runs."""

    @classmethod
    def process_id(cls, arg):
        return str(arg["id"])

    async def init(self, arg):
        self.got = []
        for group in arg.get("groups", []):
            if group not in self.groups:
                await self.join(group)

    async def handle_call(self, message):
        if message.get("op") == "leave":
            await self.leave(message["group"])
        elif message.get("op") == "sleep":
            import asyncio

            await asyncio.sleep(float(message["s"]))
        return {"id": self.process_id, "node": self.node, "got": self.got, "groups": list(self.groups)}

    async def handle_cast(self, message):
        self.got.append(message)


class Idler(HordeProcess):
    """Passivated after half a second without messages; keeps its count through passivation (handoff)."""

    idle_timeout = 0.5

    async def init(self, arg):
        self.arg = arg
        self.count = 0
        self.restored = False

    async def begin_handoff(self):
        return {"count": self.count}

    async def end_handoff(self, state):
        self.count = state["count"]
        self.restored = True

    async def handle_call(self, message):
        if message.get("op") == "timer":
            self.send_after(float(message["s"]), "tick")
        self.count += 1
        return {"arg": self.arg, "count": self.count, "epoch": self.epoch, "node": self.node,
                "restored": self.restored}

    async def handle_info(self, message):
        pass
