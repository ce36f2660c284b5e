"""Core behaviour on a real cluster: three ``runhub`` OS processes, PostgreSQL and Redis."""
import json
import threading

import pytest
import redis

from processhub.exceptions import InvalidArgument, InvalidMessage, ProcessCrashed, UnknownProcessClass
from processhub.models import Process, ProcessStatus
from processhub.placement import choose
from processhub.runtime import get_runtime
from tests.conftest import REDIS_URL, needs_services
from tests.hubtest.processes import Crashy, Echo

pytestmark = [needs_services, pytest.mark.cluster]


def test_placement_calls_casts_and_read_your_writes(cluster3):
    live = cluster3.live_names()
    assert live == {"a", "b", "c"}
    for i in range(12):
        ref = Echo.start(f"p{i}")
        assert ref.created
        assert ref.node == choose(f"{Echo.label}:p{i}", live)  # rendezvous over live nodes
        # I5: as soon as start() returned, the database knows (fetch on any node reads it).
        row = Process.objects.select_related("node").get(process_id=f"p{i}")
        assert (row.node.name, row.epoch, row.status) == (ref.node, ref.epoch, ProcessStatus.RUNNING)
        assert Echo.call(f"p{i}", {"i": i})["node"] == ref.node
        Echo.cast(f"p{i}", "hello")
    nodes = {Echo.fetch(f"p{i}").node for i in range(12)}
    assert len(nodes) >= 2
    assert all(Echo.call(f"p{i}", {})["casts"] == 1 for i in range(12))
    # A call made by code running inside one node, to a process on another.
    a = next(i for i in range(12) if Echo.fetch(f"p{i}").node != Echo.fetch("p0").node)
    relayed = Echo.call("p0", {"op": "relay", "to": f"p{a}"})
    assert relayed["node"] == Echo.fetch(f"p{a}").node


def test_fetch_from_another_node_right_after_start(cluster3):
    # Process q starts on whatever node; r is placed on some node and looks q up from inside.
    for i in range(20):
        ref = Echo.start(f"q{i}")
        got = Echo.call(f"probe{i}", {"op": "relay", "to": f"q{i}"})
        assert (got["node"], got["epoch"]) == (ref.node, ref.epoch)


def test_concurrent_get_or_start_is_single_activation(cluster3):
    ids = [f"race{i}" for i in range(30)]
    results: dict[str, list] = {pid: [] for pid in ids}
    errors = []

    def worker(seed):
        try:
            for pid in ids[seed % 7:] + ids[: seed % 7]:
                r = Echo.call(pid, {})
                # inst tells two instances on one node apart (same node, epoch and OS pid).
                results[pid].append((r["node"], r["epoch"], r["pid"], r["inst"]))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    # At the same time, every node starts the same ids from inside (relay makes the node call).
    for pid in ids[:10]:
        for via in ("x1", "x2", "x3"):
            Echo.call(via, {"op": "relay", "to": pid})
    for t in threads:
        t.join(60)
    assert not errors, errors
    for pid in ids:
        assert len(set(results[pid])) == 1, (pid, results[pid])
        row = Process.objects.get(process_id=pid)
        assert row.epoch == 1 and row.status == ProcessStatus.RUNNING


def test_handler_crash_restart_and_failure_limit(cluster3):
    with pytest.raises(ProcessCrashed) as info:
        Crashy.call("k", {"op": "crash"})
    assert info.value.exc_type == "ValueError" and "boom requested" in info.value.remote_traceback
    assert Crashy.call("k", {})["epoch"] == 2
    with pytest.raises(ProcessCrashed):
        Crashy.call("k", {"op": "crash"})
    with pytest.raises(ProcessCrashed):
        Crashy.call("k", {"op": "crash"})
    row = Process.objects.get(process_id="k", label=Crashy.label)
    assert row.status == ProcessStatus.FAILED and "boom requested" in row.last_error
    assert Crashy.fetch("k") is None
    assert Echo.call("still-serving", {})["epoch"] == 1


def test_unsigned_messages_on_a_node_channel_are_dropped_and_change_nothing(cluster3):
    """Anybody on the same Redis can publish to a node's channel (DESIGN I11): what is not sealed with the
    hub's secret is dropped and counted, never acted on; a request in the older unsigned wire format gets one
    answer naming both wire versions, so an old client learns why instead of timing out."""
    ref = Echo.start("victim")
    r = redis.Redis.from_url(REDIS_URL)
    reply_key = f"{cluster3.prefix}.reply.garbage"
    pubsub = r.pubsub()
    pubsub.subscribe(reply_key)
    garbage = [
        b"", b"\x00\xff\xfe", b"not json", b"[]", b"{}", b"\xa2" + b"\x00" * 60, b"\xa2short",
        b'{"t":"start","l":"os.system","p":"x","a":"rm -rf /"}',
        b'{"t":"stop","l":"hubtest.Echo","p":"victim"}',
        json.dumps({"t": "start", "l": "hubtest.Echo", "p": "x", "a": "x", "r": reply_key, "id": "2"}).encode(),
        ("x" * 100_000).encode(),
    ]
    node = Process.objects.select_related("node").get(process_id="victim").node
    for g in garbage:
        assert r.publish(node.channel, g) == 1
    answers = []
    for _ in range(30):
        msg = pubsub.get_message(timeout=0.1)
        if msg and msg["type"] == "message":
            answers.append(json.loads(msg["data"]))
    assert [a["id"] for a in answers] == ["2"] and "wire version" in answers[0]["msg"], answers
    assert Echo.call("victim", {"still": "ok"})["epoch"] == ref.epoch  # the stop was not obeyed
    assert not Process.objects.filter(process_id__in=["x"]).exists()
    assert all(n.alive() for n in cluster3.nodes.values())
    log = cluster3.nodes[node.name].output()
    assert "dropped a message" in log and log.count("dropped a message") <= 4  # counted, logged once per reason
    assert "Traceback" not in log


def test_sealed_but_invalid_messages_get_named_errors(cluster3):
    """A message from the hub (sealed) that fails the node's own checks is answered with a named error."""
    ref = Echo.start("victim")
    rt = get_runtime()
    channel = Process.objects.select_related("node").get(process_id="victim").node.channel
    bad = [
        ({"t": "call", "l": ["x"], "p": {}}, "invalid"),
        ({"t": "start", "l": "no.Such", "p": "x", "a": "x"}, "unknown_class"),
        ({"t": "start", "l": "hubtest.Echo", "p": "mismatch", "a": "other"}, "invalid"),
        ({"t": "nonsense", "l": "a", "p": "b"}, "invalid"),
        ({"t": "call", "l": "hubtest.Echo", "p": "victim", "m": 1, "ttl": "soon"}, "invalid"),
        ({"t": "call", "l": "hubtest.Echo", "p": "victim", "m": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]] * 1}, None),
    ]
    for env, err in bad:
        reply = rt.run_sync(rt.client.request(channel, dict(env), 5))
        if err is None:
            assert reply["ok"], reply
        else:
            assert reply["err"] == err, (env, reply)
    assert Echo.call("victim", {"still": "ok"})["epoch"] == ref.epoch
    assert not Process.objects.filter(process_id__in=["x", "mismatch"]).exists()


def test_bad_client_input_gets_named_errors(cluster3):
    with pytest.raises(InvalidArgument):
        Echo.call("", {})
    with pytest.raises(InvalidArgument):
        Echo.call("y" * 1000, {})
    with pytest.raises(InvalidMessage):
        Echo.call("fine", {"bad": {1, 2}})
    with pytest.raises(UnknownProcessClass):
        get_runtime().client.key_for(type("Ghost", (), {"label": "hubtest.Ghost"}), "g")
    assert not Process.objects.exists()
