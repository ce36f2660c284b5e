"""Pure functions as tables: placement, wire validation, RESP and frames."""
import math

import pytest

from processhub import placement, wire
from processhub.exceptions import InvalidArgument, InvalidMessage
from processhub.transport import resp
from processhub.values import NodeInfo


def test_rendezvous_is_deterministic_and_total():
    nodes = ["a", "b", "c"]
    assert placement.choose("x", nodes) == placement.choose("x", list(reversed(nodes)))
    assert placement.choose("x", []) is None
    counts = {n: 0 for n in nodes}
    for i in range(3000):
        counts[placement.choose(f"id{i}", nodes)] += 1
    assert all(800 < c < 1200 for c in counts.values()), counts


def test_rendezvous_moves_only_what_it_must():
    before = {f"id{i}": placement.choose(f"id{i}", ["a", "b", "c"]) for i in range(2000)}
    after = {k: placement.choose(k, ["a", "b", "c", "d"]) for k in before}
    moved = [k for k in before if before[k] != after[k]]
    assert all(after[k] == "d" for k in moved)  # a join only takes, never shuffles
    assert 0.15 < len(moved) / len(before) < 0.35
    gone = {k: placement.choose(k, ["a", "c"]) for k in before}
    assert all(gone[k] == before[k] for k in before if before[k] != "b")  # a leave moves only its own


def node(name, labels=("a.X",), status="up"):
    return NodeInfo(f"id-{name}", name, f"ch-{name}", frozenset(labels), status)


@pytest.mark.parametrize("nodes, label, expected", [
    ([node("a"), node("b")], "a.X", {"a", "b"}),
    ([node("a"), node("b", labels=())], "a.X", {"a"}),  # b has not got the class
    ([node("a", labels=())], "a.X", set()),  # nobody has it
    ([node("a", status="draining"), node("b")], "a.X", {"b"}),  # drained nodes only when no node that is up can
    ([node("a", status="draining"), node("b", labels=())], "a.X", {"a"}),  # ... like here
    ([node("a", status="draining")], "a.X", {"a"}),  # the last node standing is drained
])
def test_placement_eligible_nodes(nodes, label, expected):
    assert {n.name for n in placement.eligible(label, nodes)} == expected
    chosen = placement.choose_node(label, "p1", nodes)
    assert (chosen.name if chosen else None) in (expected or {None})


def test_placement_key_is_one_string_per_label_and_id():
    assert placement.key("app.Room", "7") == "app.Room:7"
    nodes = [node("a"), node("b"), node("c")]
    assert placement.choose_node("a.X", "7", nodes).name == placement.choose(placement.key("a.X", "7"), "abc")


@pytest.mark.parametrize("value", [object(), {1, 2}, math.nan, math.inf, b"bytes", {"k": lambda: 1}])
def test_check_data_refuses_non_json(value):
    with pytest.raises(InvalidMessage):
        wire.check_data(value, "message", 1000)


def test_check_data_size_and_ok():
    wire.check_data({"a": [1, "x", None, True, 1.5]}, "m", 1000)
    with pytest.raises(InvalidMessage, match="MAX_MESSAGE_BYTES"):
        wire.check_data("x" * 2000, "m", 1000)


@pytest.mark.parametrize("pid", ["", "   ", "x" * 201, 7, None, "a\x00b"])
def test_bad_ids(pid):
    with pytest.raises(InvalidArgument):
        wire.check_process_id(pid, 200)


@pytest.mark.parametrize("data", [b"", b"[]", b"{}", b'{"t": 1}', b"\xff", b"null"])
def test_loads_refuses_malformed_envelopes(data):
    with pytest.raises(InvalidMessage):
        wire.loads(data)


@pytest.mark.parametrize("data, why", [
    (b'{"t": "call", "m": NaN}', "not JSON data"),
    (b'{"t": "call", "m": Infinity}', "not JSON data"),
    (b'{"t": "call", "m": ' + b"[" * 100 + b"]" * 100 + b"}", "deeper"),
    (b'{"t": "call", "m": ' + b"[" * 100000 + b"]" * 100000 + b"}", "not JSON data|deeper|larger"),
    (b'{"t": "call", "m": "' + b"x" * 6000 + b'"}', "larger"),
])
def test_loads_refuses_hostile_envelopes(data, why):
    with pytest.raises(InvalidMessage, match=why):
        wire.loads(data, 1000)


def test_loads_accepts_nesting_up_to_the_limit():
    deep = b"[" * (wire.MAX_DEPTH - 1) + b"]" * (wire.MAX_DEPTH - 1)
    assert wire.loads(b'{"t": "call", "m": ' + deep + b"}", 10_000)["t"] == "call"


@pytest.mark.parametrize("data, expected", [
    (b'{"t": "call", "r": "ch", "id": "7"}', ("ch", "7")),
    (b'{"t": "call", "r": "ch"}', None),
    (b'{"t": "call", "r": 1, "id": "7"}', None),
    (b"not json", None),
    (b'{"r": "ch", "id": "' + b"x" * 9000 + b'"}', None),  # too large to look at
    (b'{"t": "call", "ttl": Infinity, "m": NaN, "r": "ch", "id": "7"}', ("ch", "7")),  # refused, yet answered
])
def test_reply_address(data, expected):
    assert wire.reply_address(data, 1000) == expected


@pytest.mark.parametrize("chunks, expected", [
    ([b"+OK\r\n"], ["OK"]),
    ([b":42\r\n"], [42]),
    ([b"$3\r\nabc\r\n"], [b"abc"]),
    ([b"$-1\r\n"], [None]),
    ([b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"], [[b"message", b"ch", b"hi"]]),
    ([b"$3\r\na", b"bc\r\n:1\r", b"\n"], [b"abc", 1]),  # split anywhere
    ([b"*2\r\n:1\r\n", b":2\r\n"], [[1, 2]]),
])
def test_resp_reader(chunks, expected):
    reader, got = resp.RespReader(), []
    for chunk in chunks:
        reader.feed(chunk)
        while (reply := reader.gets()) is not False:
            got.append(reply)
    assert got == expected


def test_resp_reader_errors_and_pack():
    reader = resp.RespReader()
    reader.feed(b"-WRONGPASS invalid\r\n")
    assert isinstance(reader.gets(), resp.RedisReplyError)
    reader.feed(b"?bad\r\n")
    with pytest.raises(resp.RedisReplyError):
        reader.gets()
    assert resp.pack(b"AUTH", b"pw") == b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n"


def _message(channel: bytes, data: bytes) -> bytes:
    return b"*3\r\n$7\r\nmessage\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(channel), channel, len(data), data)


def test_resp_reader_pub_sub_messages_split_anywhere():
    # A subscriber's usual read (parsed on a shortcut) must read like any other, however it is cut.
    stream = _message(b"ch", b"\xa2\r\n$3\r\n*1") + b":1\r\n" + _message(b"c\r\nh", b"") + \
        b"*3\r\n$7\r\nmessage\r\n$-1\r\n$1\r\nx\r\n" + _message(b"", b"y" * 300)
    expected = [[b"message", b"ch", b"\xa2\r\n$3\r\n*1"], 1, [b"message", b"c\r\nh", b""],
                [b"message", None, b"x"], [b"message", b"", b"y" * 300]]
    for cut in range(len(stream) + 1):
        for second in (cut, min(len(stream), cut + 7)):
            reader, got = resp.RespReader(), []
            for chunk in (stream[:cut], stream[cut:second], stream[second:]):
                reader.feed(chunk)
                while (reply := reader.gets()) is not False:
                    got.append(reply)
            assert got == expected, (cut, second)
            assert all(type(x) is bytes for r in got if isinstance(r, list) for x in r if x is not None)


@pytest.mark.parametrize("value", [
    1, -(2 ** 70), 1.5, True, None, "a\ud800b\x00\u00e9", [], {}, {"a": [1, {"b": None}], "c": "\udc80"},
    {1: 2, None: 3, 1.5: "x"}, (1, 2), {"k": {"m": [1.0, -0.0]}},
    float("nan"), float("inf"), {"k": -float("inf")}, object(), b"x", [set()], {(1,): 2},
])
def test_dumps_writes_what_the_json_encoder_writes(value):
    import json

    encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        expected = encoder.encode(value).encode("utf-8", "backslashreplace")
    except (TypeError, ValueError) as exc:
        with pytest.raises(type(exc), match="^" + str(exc)[:20]):
            wire.dumps(value)
    else:
        assert wire.dumps(value) == expected


def test_a_cycle_is_refused_by_check_data():
    cycle: dict = {}
    cycle["self"] = cycle
    with pytest.raises(InvalidMessage, match="not JSON-serializable"):
        wire.check_data(cycle, "message", 1000)
    wire.check_data({"a": [1]}, "message", 1000)  # and nothing is left behind to refuse the next message


@pytest.mark.parametrize("data", [
    b'{"t":"call","m":"\xc3\xa9"}', '{"t":"call","m":"\u00e9"}', '{"t":"call"}'.encode("utf-16-le"),
    '{"t":"call"}'.encode("utf-16"), '{"t":"call"}'.encode("utf-8-sig"), b' {"t":"call"} ', b'{"t":"\\ud800"}',
])
def test_loads_reads_what_json_loads_reads(data):
    import json

    assert wire.loads(data) == json.loads(data)


@pytest.mark.parametrize("data", [b'{\x00"t":"call"}', b'{"t":"call"', b'{"t":"\xff"}', b'{"t":"call"}x'])
def test_loads_refuses_what_json_loads_refuses(data):
    with pytest.raises(InvalidMessage, match="not JSON data"):
        wire.loads(data)


@pytest.mark.parametrize("messages", [[b"a"], [b"a", b"", b"ccc"], [b"x" * 100_000] * 5])
def test_frames_round_trip(messages):
    payloads, groups = resp.frames(messages, list(range(len(messages))))
    assert all(len(p) <= resp.FRAME_MAX + 4 + 100_000 for p in payloads)
    assert sum(groups, []) == list(range(len(messages)))
    out = []
    for p in payloads:
        got, dropped = resp.unframe(p)
        assert not dropped
        out += got
    assert out == messages


def test_unframe_bounds_what_it_returns():
    payload, _ = resp.frames([b"."] * 10, list(range(10)))
    assert resp.unframe(payload[0], max_frames=4) == ([b"."] * 4, 1)
    truncated = resp.FRAME_MARK + (100).to_bytes(4, "big") + b"short"
    assert resp.unframe(truncated) == ([truncated], 0)  # malformed: handed on whole, its reader rejects it


def test_correlation_ids_are_random_unique_and_not_inherited_by_a_fork():
    import os

    from processhub import client

    ids = [client.new_correlation_id() for _ in range(3 * client._ID_BATCH + 7)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 24 and int(i, 16) >= 0 for i in ids)  # 12 bytes from os.urandom, in hex
    assert client._ids  # made ahead ...
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # ... but never handed out again in a child
        os.write(write, b"%d" % len(client._ids))
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 16) == b"0"
    os.close(read)
    os.close(write)
