"""Processes that tests drive: echo, crashers, policies, and the double-activation recorder."""
import asyncio
import os
import time

from processhub import HordeProcess


class Echo(HordeProcess):
    """Replies with where it runs; a few ops to exercise the machinery."""

    async def init(self, arg):
        import uuid

        self.n = 0
        self.casts = 0
        self.inst = uuid.uuid4().hex[:10]  # tells two instances on one node (same node, epoch, OS pid) apart

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
        return {"node": self.node, "epoch": self.epoch, "pid": os.getpid(), "inst": self.inst, "n": self.n,
                "casts": self.casts, "echo": message}

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


class Gate:
    """Lets an embedded test step into a running handler (same OS process): entered, go, done, result."""

    def __init__(self):
        import threading

        self.entered, self.go, self.done = threading.Event(), threading.Event(), threading.Event()
        self.result = None


GATES: dict = {}  # process id -> Gate (embedded tests only: the node runs in the test's process)


class GatedSync(HordeProcess):
    """Plain ``def`` casts: ``"hold"`` holds a worker thread until ``GATES[process_id].go``; ``"mark"`` notes
    that it ran (``GATES[process_id].done``). Embedded tests fill the worker pool with holders."""

    def handle_cast(self, message):
        gate = GATES[self.process_id]
        if message == "hold":
            gate.entered.set()
            gate.go.wait(10)
        else:
            gate.result = "ran"
            gate.done.set()


def _write_metadata(label, process_id, value):
    from processhub.models import Process

    return Process.objects.filter(label=label, process_id=process_id).update(metadata=value)


class FencedWriter(HordeProcess):
    """Plain ``def``: ``{"op": "write", "value": v}`` writes its row's metadata inside ``self.fenced()``.

    ``{"op": "gated_write", ...}`` first waits on ``GATES[process_id]`` (the test changes the
    row meanwhile), then tries the same write and leaves the outcome in the gate: the
    worker thread cannot be cancelled, so the outcome is there even if the node drops
    the activation meanwhile.
    """

    def handle_call(self, message):
        op = message.get("op")
        if op == "gated_write":
            gate = GATES[self.process_id]
            gate.entered.set()
            gate.go.wait(10)
            try:
                with self.fenced():
                    _write_metadata(self.label, self.process_id, message["value"])
                gate.result = "written"
            except Exception as exc:  # noqa: BLE001 - handed to the test, which judges it
                gate.result = exc
            gate.done.set()
            return {"result": repr(gate.result)}
        if op == "write_inside_gate":
            # Holds the fenced transaction open until the test says go: a takeover must wait for it.
            gate = GATES[self.process_id]
            with self.fenced():
                gate.entered.set()
                gate.go.wait(10)
                _write_metadata(self.label, self.process_id, message["value"])
            gate.result = "written"
            gate.done.set()
        if op == "write":
            with self.fenced():
                _write_metadata(self.label, self.process_id, message["value"])
        return {"node": self.node, "epoch": self.epoch}


class AsyncFencedWriter(HordeProcess):
    """The ``run_fenced`` twin of :class:`FencedWriter` (async callbacks)."""

    async def handle_call(self, message):
        op = message.get("op")
        if op == "gated_write":
            gate = GATES[self.process_id]
            gate.entered.set()
            await asyncio.to_thread(gate.go.wait, 10)
            write = asyncio.ensure_future(self.run_fenced(_write_metadata, self.label, self.process_id,
                                                          message["value"]))

            def done(fut):
                gate.result = "cancelled" if fut.cancelled() else (fut.exception() or "written")
                gate.done.set()

            write.add_done_callback(done)
            try:
                await asyncio.shield(write)  # the outcome reaches the gate even if this handler is cancelled
            except Exception:  # noqa: BLE001 - left in the gate by done()
                pass
            return {"result": repr(gate.result)}
        if op == "write":
            await self.run_fenced(_write_metadata, self.label, self.process_id, message["value"])
        return {"node": self.node, "epoch": self.epoch}


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


# ---------------------------------------------------------------- chaos suite (issues 3 and 15)


class _Evidence:
    """What both recorders share: the event of one callback, and where it goes.

    An event names the process (``pid``, ``label``), where and as what it ran
    (``node``, ``nid`` = node incarnation, ``epoch``, ``inst`` = this Python
    instance, ``os`` = OS pid), the callback (``kind`` for the double-activation
    checker: start/tick/stop; ``cb`` the callback itself) and ``t``, the wall
    clock taken when the callback began to act (one machine, one clock). Events go
    to the Redis list ``key`` at ``CHAOS_RECORD_URL`` (not through the node's
    possibly partitioned link); one that cannot be written is kept by
    ``tests.chaos.recording.note_lost``, so the verdict fails rather than misses it.
    """

    @classmethod
    def process_id(cls, arg):
        return str(arg["id"])

    @staticmethod
    def _url():
        return os.environ.get("CHAOS_RECORD_URL") or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"

    @property
    def inst(self):
        inst = self.__dict__.get("_evidence_inst")
        if inst is None:
            import uuid

            inst = self.__dict__["_evidence_inst"] = uuid.uuid4().hex[:10]
        return inst

    def _incarnation(self):
        # The incarnation that runs this activation, fixed at its first event (init): after a fence and a
        # rejoin the node object carries on under a new id, while this activation belongs to the old one.
        nid = self.__dict__.get("_evidence_nid")
        if nid is None:
            nid = self.__dict__["_evidence_nid"] = self.node_id
        return nid

    def _event(self, kind, cb, **extra):
        return {"pid": self.process_id, "label": self.label, "node": self.node, "nid": self._incarnation(),
                "epoch": self.epoch, "inst": self.inst, "os": os.getpid(), "kind": kind, "cb": cb,
                "t": time.time(), **extra}

    def _lost(self, event, error):
        from tests.chaos.recording import note_lost

        note_lost(self.key, event, error)


class ChaosRecorder(_Evidence, HordeProcess):
    """Async recorder: one event per callback it runs (terminate with its reason), alive ticks every ``tick`` s.

    The argument is ``{"id", "key", "tick"}``. Calls: ``{"op": "crash"}`` raises,
    ``{"op": "exit"}`` exits normally, anything else is recorded and answered.
    """

    _clients: dict = {}

    @classmethod
    def _client(cls):
        import redis.asyncio as aioredis

        loop = asyncio.get_running_loop()
        client = cls._clients.get(id(loop))
        if client is None:
            client = cls._clients[id(loop)] = aioredis.Redis.from_url(cls._url(), socket_timeout=5,
                                                                       socket_connect_timeout=2)
        return client

    async def _log(self, kind, cb, **extra):
        import json

        event = self._event(kind, cb, **extra)
        try:
            push = asyncio.ensure_future(self._client().rpush(self.key, json.dumps(event)))
        except Exception as exc:  # noqa: BLE001 - the recorder must not crash the process under test
            self._lost(event, exc)
            return

        def done(fut):
            if fut.cancelled():
                self._lost(event, "cancelled")
            elif fut.exception() is not None:
                self._lost(event, fut.exception())

        push.add_done_callback(done)
        # Shielded: an activation cancelled right after acting still has its action on record.
        try:
            await asyncio.shield(push)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - kept by done() above
            pass

    async def init(self, arg):
        self.key = arg["key"]
        self.tick = float(arg.get("tick", 0.5))
        await self._log("start", "init")
        self.send_after(self.tick, "tick")

    async def handle_continue(self):
        await self._log("tick", "handle_continue")

    async def handle_info(self, message):
        self.send_after(self.tick, "tick")
        await self._log("tick", "handle_info")

    async def handle_call(self, message):
        op = message.get("op") if isinstance(message, dict) else None
        await self._log("tick", "handle_call", op=op)
        if op == "crash":
            raise ValueError("crash requested")
        if op == "exit":
            self.exit("normal")
        return {"node": self.node, "node_id": self._incarnation(), "epoch": self.epoch, "inst": self.inst,
                "os": os.getpid()}

    async def handle_cast(self, message):
        await self._log("tick", "handle_cast")

    async def terminate(self, reason):
        await self._log("stop", "terminate", reason=reason)

    async def begin_handoff(self):
        await self._log("tick", "begin_handoff")
        return {"inst": self.inst}

    async def end_handoff(self, state):
        await self._log("tick", "end_handoff", from_inst=state.get("inst") if isinstance(state, dict) else None)


class BlockingRecorder(_Evidence, HordeProcess):
    """Plain ``def`` recorder: its callbacks run in a worker thread that nobody can cancel.

    ``{"op": "block", "seconds": s, "step": d}`` sleeps ``s`` seconds in steps of
    ``d`` and records every step (``cb`` = ``"block"``): a handler that outlives
    its lease -- its node paused, cut off, draining -- shows up step by step.
    Every other callback is recorded as by ``ChaosRecorder``.
    """

    _sync_clients: dict = {}

    @classmethod
    def _sync_client(cls):
        import redis

        client = cls._sync_clients.get(os.getpid())  # per OS process: a client must not cross a fork
        if client is None:
            client = cls._sync_clients[os.getpid()] = redis.Redis.from_url(cls._url(), socket_timeout=5,
                                                                             socket_connect_timeout=2)
        return client

    def _log(self, kind, cb, **extra):
        import json

        event = self._event(kind, cb, **extra)
        try:
            self._sync_client().rpush(self.key, json.dumps(event))
        except Exception as exc:  # noqa: BLE001 - the recorder must not crash the process under test
            self._lost(event, exc)

    def init(self, arg):
        self.key = arg["key"]
        self.tick = float(arg.get("tick", 0.5))
        self._log("start", "init")
        self.send_after(self.tick, "tick")

    def handle_continue(self):
        self._log("tick", "handle_continue")

    def handle_info(self, message):
        self.send_after(self.tick, "tick")
        self._log("tick", "handle_info")

    def handle_call(self, message):
        op = message.get("op") if isinstance(message, dict) else None
        self._log("tick", "handle_call", op=op)
        steps = 0
        if op == "block":
            seconds, step = float(message.get("seconds", 1.0)), float(message.get("step", 0.05))
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                time.sleep(step)
                steps += 1
                self._log("tick", "block", step=steps)
        elif op == "exit":
            self.exit("normal")
        return {"node": self.node, "node_id": self._incarnation(), "epoch": self.epoch, "inst": self.inst,
                "os": os.getpid(), "steps": steps}

    def handle_cast(self, message):
        self._log("tick", "handle_cast")

    def terminate(self, reason):
        self._log("stop", "terminate", reason=reason)

    def begin_handoff(self):
        self._log("tick", "begin_handoff")
        return {"inst": self.inst}

    def end_handoff(self, state):
        self._log("tick", "end_handoff", from_inst=state.get("inst") if isinstance(state, dict) else None)


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
        cls = next(c for c in _test_classes() if c.label == message["label"])
        ref = await cls.afetch(message["arg"])
        if ref is None:
            return None
        return {"node": ref.node, "node_id": ref.node_id, "epoch": ref.epoch, "here": self.node}


def _test_classes():
    """The registered process classes of this module (by their public ``label``)."""
    return [v for v in globals().values() if isinstance(v, type) and issubclass(v, HordeProcess) and v.label]


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
