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


# ---------------------------------------------------------------- chaos suite (issue 3)


class ChaosRecorder(HordeProcess):
    """Recorder for the chaos suite (tests/chaos): start/tick/stop events with two more facts.

    ``ok`` says whether the node's lease was still valid right *after* the event's
    time ``t`` was taken, so ``ok`` events certainly happened under a valid lease and
    the double-activation checker can trust them; an event with ``ok`` false is an
    action taken after the lease ran out (a zombie action, counted separately).
    ``inst`` names the instance, so two instances of one (id, epoch) are visible.
    The argument is ``{"id", "key", "tick"}``; events go to the Redis list ``key`` at
    ``CHAOS_RECORD_URL`` (not through the node's own, possibly partitioned, Redis link).
    """

    _clients: dict = {}
    unrecorded = 0  # events that could not be written (counted per node process)

    @classmethod
    def process_id(cls, arg):
        return str(arg["id"])

    @classmethod
    def _client(cls):
        import redis.asyncio as aioredis

        loop = asyncio.get_running_loop()
        client = cls._clients.get(id(loop))
        if client is None:
            url = os.environ.get("CHAOS_RECORD_URL") or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
            client = cls._clients[id(loop)] = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        return client

    async def _log(self, kind):
        import json

        # Time first, lease second: a valid lease now means it was valid at t.
        t = time.time()
        ok = self._slot.node.lease_valid()
        event = {"pid": self.process_id, "node": self.node, "epoch": self.epoch, "kind": kind, "t": t, "ok": ok,
                 "inst": self.inst}
        try:
            # Shielded: an activation cancelled right after acting still has its action on record.
            await asyncio.shield(self._client().rpush(self.key, json.dumps(event)))
        except Exception:  # noqa: BLE001 - the recorder must not crash the process under test
            ChaosRecorder.unrecorded += 1

    async def init(self, arg):
        import uuid

        self.key = arg["key"]
        self.tick = float(arg.get("tick", 0.5))
        self.inst = uuid.uuid4().hex[:10]
        await self._log("start")
        self.send_after(self.tick, "tick")

    async def handle_info(self, message):
        self.send_after(self.tick, "tick")
        await self._log("tick")

    async def handle_call(self, message):
        op = message.get("op") if isinstance(message, dict) else None
        if op == "crash":
            raise ValueError("crash requested")
        await self._log("tick")
        if op == "exit":
            self.exit("normal")
        return {"node": self.node, "epoch": self.epoch, "inst": self.inst}

    async def terminate(self, reason):
        # A fenced activation stopped acting at its lease check; its clean-up is not live work.
        if reason != "lease lost":
            await self._log("stop")


class StormRecorder(ChaosRecorder):
    """A recorder that may crash three times a minute before it fails (restart storms)."""

    max_restarts = 3
    max_seconds = 60


class TransientRecorder(ChaosRecorder):
    restart = "transient"


class TemporaryRecorder(ChaosRecorder):
    restart = "temporary"


class Prober(HordeProcess):
    """Looks other processes up from inside a node (read-your-writes across nodes)."""

    async def handle_call(self, message):
        from processhub import registry

        cls = registry.get(message["label"])
        ref = await cls.afetch(message["arg"])
        if ref is None:
            return None
        return {"node": ref.node, "node_id": ref.node_id, "epoch": ref.epoch, "here": self.node}


class Sink(HordeProcess):
    """Takes any JSON argument with an ``id`` and echoes messages (fuzzing the client API)."""

    @classmethod
    def process_id(cls, arg):
        return arg["id"]

    async def handle_call(self, message):
        return {"echo": message}


class SlowInit(HordeProcess):
    """An init that takes ``arg["s"]`` seconds (activations killed before they are ready)."""

    @classmethod
    def process_id(cls, arg):
        return str(arg["id"])

    async def init(self, arg):
        await asyncio.sleep(float(arg["s"]))

    async def handle_call(self, message):
        return {"node": self.node, "epoch": self.epoch}


class SlowTerminate(HordeProcess):
    """A terminate that takes ``arg["s"]`` seconds (keeps a node busy stopping it)."""

    @classmethod
    def process_id(cls, arg):
        return str(arg["id"])

    async def init(self, arg):
        self.s = float(arg["s"])

    async def handle_call(self, message):
        return {"node": self.node, "epoch": self.epoch}

    async def terminate(self, reason):
        await asyncio.sleep(self.s)


class BadConstructor(HordeProcess):
    """Raises in __init__, before init(): must fail cleanly, never leave a dead slot behind."""

    def __init__(self):
        raise RuntimeError("constructor refuses")
