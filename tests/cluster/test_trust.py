"""Trust boundaries on a real cluster (DESIGN I11, I8): a raw Redis client can neither forge nor replay,
hostile input costs a node nothing, a wrong secret isolates a node, capacity and wire versions are named.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
import redis

from processhub.exceptions import CallTimeout, HubAtCapacity, IncompatibleWireVersion, ProcessHubError
from processhub.models import Node, Process
from processhub.runtime import get_runtime
from processhub.transport.envelope import HEADER_SIZE
from processhub.transport.resp import FRAME_MARK
from tests.cluster.harness import wait_for
from tests.conftest import REDIS_URL, needs_services
from tests.hubtest.processes import Echo, Sink

pytestmark = [needs_services, pytest.mark.cluster]


def node_channel(pid: str, label: str = Echo.label) -> str:
    return Process.objects.select_related("node").get(label=label, process_id=pid).node.channel


class Capture:
    """Every message published on channels matching ``pattern``, as a raw Redis client sees them."""

    def __init__(self, pattern: str) -> None:
        self.r = redis.Redis.from_url(REDIS_URL)
        self.pubsub = self.r.pubsub()
        self.pubsub.psubscribe(pattern)
        self.pubsub.get_message(timeout=1)
        self.got: list[tuple[bytes, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self.pubsub.get_message(timeout=0.05)
            if msg and msg["type"] == "pmessage":
                self.got.append((msg["channel"], msg["data"]))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.pubsub.close()


def test_replayed_and_forged_messages_from_a_raw_redis_client_are_never_acted_on(cluster3):
    Echo.start("target")
    assert Echo.call("target", {})["casts"] == 0
    cap = Capture(f"{cluster3.prefix}.*")
    try:
        Echo.cast("target", {"n": 1})
        wait_for(lambda: any(b'"t":"cast"' in data for _, data in cap.got), 5, "the cast on the wire")
        assert Echo.call("target", {})["casts"] == 1
        casts = [(ch, data) for ch, data in cap.got if b'"t":"cast"' in data]
        stop_env = json.dumps({"t": "stop", "l": Echo.label, "p": "target"}).encode()
    finally:
        cap.close()
    r = redis.Redis.from_url(REDIS_URL)
    for ch, data in casts * 5:  # the very bytes the client sent, again and again
        assert r.publish(ch, data) == 1
    forged = bytearray(casts[0][1])
    forged[-5] ^= 1  # one bit of the payload
    r.publish(casts[0][0], bytes(forged))
    r.publish(node_channel("target"), stop_env)  # an unsigned STOP, as any Redis client could send
    time.sleep(0.5)
    assert Echo.call("target", {})["casts"] == 1  # nothing replayed, forged or unsigned was handled
    assert Echo.fetch("target") is not None


def test_forged_replies_cannot_answer_a_waiting_call(cluster3):
    """Reply channels are readable by any Redis client: a forged reply, even with the right correlation id,
    is not signed, so the waiting call gets the real answer."""
    Echo.start("slow")
    rt = get_runtime()
    r = redis.Redis.from_url(REDIS_URL)
    cap = Capture(f"{cluster3.prefix}.node.*")
    try:
        result: dict = {}
        caller = threading.Thread(target=lambda: result.update(v=Echo.call("slow", {"op": "sleep", "s": 1.0})))
        caller.start()
        wait_for(lambda: any(b'"op":"sleep"' in d for _, d in cap.got), 5, "the call on the wire")
        [(_, data)] = [(c, d) for c, d in cap.got if b'"op":"sleep"' in d]
    finally:
        cap.close()
    env = json.loads(data[HEADER_SIZE:])  # the envelope is sealed, not encrypted: anybody can read it
    forged = json.dumps({"t": "reply", "id": env["id"], "ok": True, "v": "FORGED"}).encode()
    assert r.publish(rt.client.reply_channel, forged) == 1
    caller.join(10)
    assert result["v"]["echo"] == {"op": "sleep", "s": 1.0}


def test_hostile_input_costs_the_node_nothing_and_good_starts_succeed(cluster_factory):
    c = cluster_factory()
    c.start_node("a")
    rt = get_runtime()
    ref = Echo.start("alive")
    channel = node_channel("alive")
    r = redis.Redis.from_url(REDIS_URL)
    # Huge payloads, deep nesting and a frame of a million tiny messages, unsigned: dropped unread.
    r.publish(channel, b"{" * 2_000_000)
    r.publish(channel, FRAME_MARK + (b"\x00\x00\x00\x01x" * 1_000_000))
    pipe = r.pipeline(transaction=False)
    for i in range(50_000):
        pipe.publish(channel, b"%d" % i)
    pipe.execute()
    # Sealed (as a hub member would send them) but invalid: NaN in one START among 40 good ones, a huge one,
    # a deep one. The good starts all succeed; the bad ones get an invalid-message answer.
    bad = [
        b'{"t":"start","l":"hubtest.Sink","p":"nan","a":{"id":"nan","x":NaN}}',
        b'{"t":"start","l":"hubtest.Sink","p":"deep","a":{"id":"deep","x":' + b"[" * 500 + b"]" * 500 + b"}}",
        b'{"t":"cast","l":"hubtest.Echo","p":"alive","m":"' + b"x" * 3_000_000 + b'"}',
    ]

    async def both():
        good = [rt.client.start(Sink, {"id": f"good{i}"}, timeout=20) for i in range(40)]
        for b in bad:
            await rt.transport.publish(channel, b)
        return await asyncio.gather(*good, return_exceptions=True)

    results = rt.run_sync(both(), 60)
    assert all(not isinstance(x, Exception) and x.created for x in results), results
    assert not Process.objects.filter(process_id__in=["nan", "deep"]).exists()
    assert Echo.call("alive", {})["epoch"] == ref.epoch
    log = c.nodes["a"].output()
    assert "fenced" not in log, "hostile input threatened the lease"
    assert log.count("Traceback") == 0
    assert log.count("dropped a message") <= 5 and log.count("rejected a malformed message") <= 3  # bounded


def test_a_node_with_a_wrong_secret_is_unreachable_not_dangerous(cluster_factory):
    c = cluster_factory()
    c.start_node("good")
    c.extra_env = {"PROCESSHUB_SECRET": json.dumps("not-the-hub-secret")}
    c.start_node("bad")
    c.extra_env = {}
    rt = get_runtime()
    rt.run_sync(rt.client.nodes(True))
    with pytest.raises(CallTimeout):
        Echo.start("on-bad", node="bad", timeout=2)  # it never hears the start
    ok = Echo.start("on-good", node="good")
    Echo.cast("on-good", {})
    assert Echo.call("on-good", {})["casts"] == 1
    assert ok.node == "good"
    wait_for(lambda: "unknown key" in c.nodes["bad"].output(), 5, "the bad node to drop what it cannot open")
    assert c.nodes["bad"].alive() and c.nodes["good"].alive()


def test_capacity_skips_full_nodes_and_names_a_full_hub(cluster_factory):
    c = cluster_factory(settings={"MAX_PROCESSES_PER_NODE": 5})
    c.start_node("a")
    c.start_node("b")
    refs = [Echo.start(f"cap{i}") for i in range(10)]
    assert sorted(r.node for r in refs) == ["a"] * 5 + ["b"] * 5  # each node took its five
    with pytest.raises(HubAtCapacity):
        Echo.start("one-too-many", timeout=3)
    Echo.stop("cap0")
    wait_for(lambda: Echo.start("room-again", timeout=3), 10, "a start once there is room")


def test_a_process_on_a_node_of_another_wire_version_is_named(cluster3):
    ref = Echo.start("old-node")
    Node.objects.filter(id=ref.node_id).update(wire=1)  # as a node of the previous release would register
    rt = get_runtime()
    rt.run_sync(rt.client.nodes(True))
    rt.client.cache.clear()
    with pytest.raises(IncompatibleWireVersion, match="wire version 1"):
        Echo.call("old-node", {})
    # New processes are placed only on nodes of this version.
    assert ref.node not in {Echo.start(f"new{i}").node for i in range(20)}
    with pytest.raises(ProcessHubError):
        Echo.start("guided", node=ref.node, timeout=2)

