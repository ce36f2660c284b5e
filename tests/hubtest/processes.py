"""Processes that tests drive: echo, crashers, policies, and the double-activation recorder."""
import asyncio
import os
import time

from processhub import HordeProcess


class Echo(HordeProcess):
    """Replies with where it runs; a few ops to exercise the machinery."""

    async def init(self, arg):
        self.n = 0
        self.casts = 0

    async def handle_call(self, message):
        self.n += 1
        op = message.get("op") if isinstance(message, dict) else None
        if op == "sleep":
            await asyncio.sleep(float(message["s"]))
        elif op == "crash":
            raise ValueError("boom requested")
        elif op == "exit":
            self.exit(message.get("reason", "normal"))
        elif op == "relay":
            # A call made by code running inside a node, to another process.
            return await Echo.acall(message["to"], {"op": "where"})
        elif op == "unserializable":
            return object()
        return {"node": self.node, "epoch": self.epoch, "pid": os.getpid(), "n": self.n, "casts": self.casts,
                "echo": message}

    async def handle_cast(self, message):
        self.casts += 1


class Transient(Echo):
    restart = "transient"


class Temporary(Echo):
    restart = "temporary"


class Crashy(Echo):
    restart = "permanent"
    max_restarts = 2
    max_seconds = 30


class BadInit(HordeProcess):
    async def init(self, arg):
        raise RuntimeError("init refuses")


class SyncEcho(HordeProcess):
    """Plain ``def`` callbacks run in a worker thread, where fenced() writes work."""

    def init(self, arg):
        self.n = 0

    def handle_call(self, message):
        from processhub.models import Process

        self.n += 1
        if isinstance(message, dict) and message.get("op") == "fenced_write":
            with self.fenced():
                Process.objects.filter(label=self.label, process_id=self.process_id).update(
                    metadata={"written_by": self.node, "epoch": self.epoch}
                )
        return {"n": self.n, "node": self.node}


class Recorder(HordeProcess):
    """Double-activation detector: reports start/tick/stop to a Redis list outside the cluster.

    Times are the node's wall clock taken right after the node's lease check
    (all test nodes share one machine, so one clock). ``key`` in the argument
    names the list.
    """

    tick = 0.1
    _redis = None

    @classmethod
    def process_id(cls, arg):
        return str(arg["id"])

    async def _log(self, kind, t):
        import json

        import redis.asyncio as aioredis

        if Recorder._redis is None:
            Recorder._redis = aioredis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        event = {"pid": self.process_id, "node": self.node, "epoch": self.epoch, "kind": kind, "t": t}
        try:
            await Recorder._redis.rpush(self.key, json.dumps(event))
        except Exception:  # noqa: BLE001 - the detector must not crash the process under test
            pass

    async def init(self, arg):
        self.key = arg["key"]
        await self._log("start", time.time())
        self.send_after(self.tick, "tick")

    async def handle_info(self, message):
        t = time.time()
        self.send_after(self.tick, "tick")
        await self._log("tick", t)

    async def handle_call(self, message):
        t = time.time()
        await self._log("tick", t)
        return {"node": self.node, "epoch": self.epoch}

    async def terminate(self, reason):
        # A fenced activation stops handling at its lease check; its late clean-up
        # is not a second live activation, so it is not reported as one.
        if reason != "lease lost":
            await self._log("stop", time.time())
