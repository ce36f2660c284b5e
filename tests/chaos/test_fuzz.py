"""Fuzzing (issue 3): garbage and near-valid input into the client API and into a node's inbox.

Promise under test (DESIGN I7, I8): the node never dies, and every bad input
gets a named error -- a ``ProcessHubError`` subclass for a caller, an error reply
with a known code (and a log line) for a raw message on the wire.
"""
from __future__ import annotations

import itertools
import json
import math
import reprlib
import time

import pytest
import redis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from processhub import wire
from processhub.conf import envelope_keys, hub_settings
from processhub.exceptions import ProcessHubError
from processhub.models import Node
from processhub.runtime import get_runtime
from processhub.transport.envelope import EnvelopeRefused, Opener, Sealer
from tests.conftest import REDIS_URL, needs_services
from tests.hubtest.processes import Echo, Sink

pytestmark = [needs_services, pytest.mark.chaos]

KNOWN_CODES = {wire.E_CRASHED, wire.E_NOT_HERE, wire.E_FENCED, wire.E_INVALID, wire.E_UNKNOWN_CLASS,
               wire.E_NOT_RUNNING, wire.E_UNAVAILABLE}

# Every character, lone surrogates and NUL included.
any_text = st.text(st.characters(exclude_categories=()), max_size=12)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                      st.floats(allow_nan=False, allow_infinity=False), any_text)
json_values = st.recursive(json_leaf, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                             st.dictionaries(any_text, kids, max_size=3)),
                           max_leaves=6)
# Python values a caller might pass that JSON cannot carry faithfully, or at all.
not_json = st.one_of(st.binary(max_size=6), st.builds(object), st.sets(st.integers(), max_size=2),
                     st.sampled_from([float("nan"), float("inf"), -float("inf")]),
                     st.dictionaries(st.integers(), json_leaf, min_size=1, max_size=2),
                     st.tuples(json_leaf))
anything = st.one_of(json_values, not_json, st.lists(not_json, max_size=2))


def _deep(n: int) -> list:
    value: list = []
    for _ in range(n):
        value = [value]
    return value


# ------------------------------------------------------------------ the client API


def _client_op(op: str, cls, arg, message, timeout):
    if op == "start":
        return cls.start(arg, timeout=timeout)
    if op == "call":
        return cls.call(arg, message, timeout=timeout)
    if op == "cast":
        return cls.cast(arg, message)
    if op == "fetch":
        return cls.fetch(arg)
    return cls.stop(arg, timeout=timeout)


def _plain_json(value, depth: int = 0) -> bool:
    """JSON that survives a round trip unchanged in type and value, with only storable strings."""
    if depth > 50:
        return False
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return "\x00" not in value and _encodable(value)
    if isinstance(value, list):
        return all(_plain_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_json(k) and _plain_json(v, depth + 1) for k, v in value.items())
    return False


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _surely_valid(op, cls, arg, message, timeout) -> bool:
    """Input the API documents as fine: it must succeed, whatever the fuzzer thought of it."""
    if timeout is not None and not (isinstance(timeout, float) and math.isfinite(timeout) and timeout >= 1.0):
        return False
    if not _plain_json(arg) or len(json.dumps(arg)) > 100_000:
        return False
    if cls is Sink:
        pid = arg.get("id") if isinstance(arg, dict) else None
    else:
        pid = str(arg) if isinstance(arg, int) and not isinstance(arg, bool) else arg
    if not (isinstance(pid, str) and pid.strip() and len(pid) <= 200):
        return False
    if op not in ("call", "cast"):
        return True
    if cls is Echo and isinstance(message, dict) and "op" in message:
        return False  # Echo's own commands (crash, sleep, exit, ...) are not plain messages
    return _plain_json(message) and len(json.dumps(message)) < 100_000


def _check_named(op, cls, arg, message, timeout) -> None:
    valid = _surely_valid(op, cls, arg, message, timeout)
    t0 = time.monotonic()
    try:
        result = _client_op(op, cls, arg, message, timeout)
    except ProcessHubError as exc:
        if valid:
            raise AssertionError(f"{op} on {cls.__name__} with valid arg={reprlib.repr(arg)} "
                                 f"message={reprlib.repr(message)} timeout={timeout!r} was refused: {exc!r}") from exc
    except Exception as exc:  # noqa: BLE001 - the finding: an error without a processhub name
        raise AssertionError(f"{op} on {cls.__name__} with arg={reprlib.repr(arg)} message={reprlib.repr(message)} "
                             f"timeout={timeout!r} "
                             f"raised an unnamed {type(exc).__name__}: {exc}") from exc
    else:
        if valid and op == "call":
            assert result["echo"] == message, (arg, message, result)  # the reply carries the message back intact
        if valid and op == "start":
            assert result.process_id == (arg["id"] if cls is Sink else str(arg)), (arg, result)
    took = time.monotonic() - t0
    # Bounded (I7): the timeout plus scheduling noise, not a speed figure.
    bound = (timeout if isinstance(timeout, float) and 0 < timeout < 10 else 5.0) + 5.0
    assert took < bound, f"{op} with arg={reprlib.repr(arg)} took {took:.1f}s"


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(op=st.sampled_from(["start", "call", "cast", "fetch", "stop"]), cls=st.sampled_from([Sink, Echo]),
       arg=st.one_of(anything, st.fixed_dictionaries({"id": st.one_of(any_text, anything)}, optional={"x": anything})),
       message=anything,
       timeout=st.one_of(st.none(), st.floats(min_value=-1, max_value=3), st.sampled_from([0.0, float("nan")])))
def test_client_api_names_every_bad_input(embedded, op, cls, arg, message, timeout):
    _check_named(op, cls, arg, message, timeout)


plain_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                     max_size=12).filter(str.strip)
plain_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**62), max_value=2**62),
                       st.floats(allow_nan=False, allow_infinity=False), plain_text)
plain_json = st.recursive(plain_leaf, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                              st.dictionaries(plain_text, kids, max_size=3)),
                          max_leaves=6)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(op=st.sampled_from(["start", "call", "cast", "fetch", "stop"]), cls=st.sampled_from([Sink, Echo]),
       pid=plain_text, extra=plain_json, message=plain_json, timeout=st.one_of(st.none(), st.floats(1.0, 5.0)))
def test_client_api_accepts_every_valid_input(embedded, op, cls, pid, extra, message, timeout):
    """Valid input must work: a fuzz run that accepted any named error would pass on a client refusing it all."""
    arg = {"id": pid, "x": extra} if cls is Sink else pid
    assume(not (cls is Echo and isinstance(message, dict) and "op" in message))
    assert _surely_valid(op, cls, arg, message, timeout)
    _check_named(op, cls, arg, message, timeout)


@pytest.mark.parametrize("arg,message", [
    ({"id": "deep"}, _deep(5000)),
    ({"id": "deep", "x": _deep(5000)}, {}),
    ({"id": "nul", "x": "a\x00b"}, {}),
    ({"id": "surrogate"}, {"s": "\ud800"}),
    ({"id": "\ud800"}, {}),
    ({"id": "big", "x": "x" * 2_000_000}, {}),
])
def test_client_api_names_pathological_inputs(embedded, arg, message):
    for op in ("start", "call"):
        _check_named(op, Sink, arg, message, 3.0)
    assert Echo.call("still-alive", {})["node"]  # the node survived


# ------------------------------------------------------------------ a node's inbox


ODD_IDS = ["", " ", "x" * 300, "a\x00b", "\ud800", "\udfff-x"]


@st.composite
def near_valid(draw, live_pid: str) -> dict:
    """Mostly-valid envelopes with one or two fields bent: the inputs that reach deep into a node."""
    kind = draw(st.sampled_from([wire.START, wire.CALL, wire.CALL, wire.CAST, wire.STOP, wire.MOVE]))
    label = draw(st.one_of(st.sampled_from([Echo.label, Echo.label, Sink.label]), st.just("hubtest.Nope"),
                           json_leaf))
    pid = draw(st.one_of(st.just(live_pid), st.sampled_from(ODD_IDS), any_text, json_leaf))
    env = {"t": kind, "l": label, "p": pid}
    if kind == wire.START:
        env["a"] = draw(st.one_of(st.just(pid), st.just({"id": pid}), json_values))
    if kind in (wire.CALL, wire.CAST):
        env["m"] = draw(st.one_of(st.fixed_dictionaries({"s": any_text}), json_values))
        if draw(st.booleans()):
            env["ttl"] = draw(st.one_of(st.floats(min_value=0.5, max_value=5), json_leaf))
    if kind == wire.MOVE:
        env["to"] = draw(st.one_of(st.none(), json_leaf))
        env["e"] = draw(json_leaf)
    drop = draw(st.sampled_from([None, None, None, "t", "l", "p", "m"]))
    env.pop(drop, None)
    return env


def envelopes(live_pid: str):
    label = st.one_of(st.sampled_from([Echo.label, Sink.label, "hubtest.Nope", "os.system"]), any_text,
                      json_leaf, json_values)
    pid = st.one_of(st.just(live_pid), any_text, st.sampled_from(ODD_IDS), json_values)
    kind = st.one_of(st.sampled_from([wire.START, wire.CALL, wire.CAST, wire.STOP, wire.MOVE, wire.ACTIVATE,
                                      wire.REPLY, wire.EVENT]), any_text, json_leaf)
    fields = {"t": kind, "l": label, "p": pid, "a": st.one_of(pid, json_values), "m": json_values,
              "ttl": st.one_of(st.floats(allow_nan=False), st.integers(), json_leaf), "to": json_values,
              "e": json_values}
    envelope = st.fixed_dictionaries({}, optional=fields)
    return st.one_of(
        st.tuples(st.just("raw"), st.binary(max_size=40)),
        st.tuples(st.just("json"), json_values),
        st.tuples(st.just("env"), envelope),
        st.tuples(st.just("env"), near_valid(live_pid)),
        st.tuples(st.just("env"), near_valid(live_pid)),
        st.tuples(st.just("env"), near_valid(live_pid)),
    )


LIVE = "fuzz-live"
# Inputs that once reached deep into a node (each was a bug, see test_core_regressions): always tried.
KNOWN_BAD = [
    {"t": wire.START, "l": Echo.label, "p": "a\x00b", "a": "a\x00b"},
    {"t": wire.START, "l": Echo.label, "p": "\ud800", "a": "\ud800"},
    {"t": wire.START, "l": Sink.label, "p": "nul-arg", "a": {"id": "nul-arg", "k": "\x00"}},
    {"t": wire.START, "l": Sink.label, "p": "surrogate-arg", "a": {"id": "surrogate-arg", "k": "\udc80"}},
    {"t": wire.START, "l": Echo.label, "p": "x" * 300, "a": "x" * 300},
    {"t": wire.START, "l": Echo.label, "p": "", "a": ""},
    {"t": wire.CALL, "l": Echo.label, "p": LIVE, "m": {"s": "\ud800"}},
    {"t": wire.CALL, "l": Echo.label, "p": LIVE, "m": {}, "ttl": -1},
    {"t": wire.CALL, "l": Echo.label, "p": LIVE, "m": {}, "ttl": "soon"},
    {"t": wire.CALL, "l": Echo.label, "p": LIVE, "m": {}, "ttl": float("inf")},  # Infinity: refused, answered
    {"t": wire.CALL, "m": {"x": float("nan")}},  # NaN and no address of a process: answered all the same
    {"t": wire.MOVE, "l": Echo.label, "p": LIVE, "to": "nobody", "e": 999},
]


def _needs_reply(env: dict) -> bool:
    """Whether the node owes this enveloped message an answer (it has a reply address)."""
    kind = env.get("t")
    if kind in (wire.CAST, wire.ACTIVATE):
        return False
    return True


def test_node_inbox_survives_garbage_and_near_valid_messages(chaos_factory):
    c = chaos_factory()
    c.start_node("a")
    live = LIVE
    Echo.start(live, node="a")
    channel = Node.objects.get(id=c.incarnation("a")).channel
    r = redis.Redis.from_url(REDIS_URL)
    sub = r.pubsub(ignore_subscribe_messages=True)
    reply_channel = f"{c.prefix}.reply.fuzzer"
    sub.subscribe(reply_channel)
    seq = itertools.count()
    unanswered: list = []
    codes: dict = {}
    # The hub's messages are sealed (DESIGN I11): the fuzzer seals what it sends, as a member of the hub
    # would, so the node's own checks are what it meets; the unsealed copy of each is dropped unread.
    keys = envelope_keys(hub_settings())
    sealer, opener = Sealer(keys), Opener(keys, 30)

    def wait_reply(corr: str, timeout: float = 3.0) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = sub.get_message(timeout=0.2)
            if msg is None:
                continue
            try:
                env = json.loads(opener.open(reply_channel.encode(), msg["data"], time.time()))
            except EnvelopeRefused:
                # The unsealed copy of a request with a reply address: the node's unsigned answer naming
                # the wire versions (at most one a second), which tells an older client why.
                assert b"wire version" in msg["data"], msg["data"][:200]
                continue
            if env.get("id") == corr:
                return env
        return None

    def one_each(cases):
        for case in cases:
            one.hypothesis.inner_test(case=case)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=envelopes(live))
    def one(case):
        form, value = case
        corr = f"f{next(seq)}"
        if form == "raw":
            data = value
        elif form == "json":
            data = json.dumps(value).encode()
        else:
            value = {**value, "r": reply_channel, "id": corr}
            data = json.dumps(value).encode()
        assert r.publish(channel, data) == 1, "the node stopped listening"  # unsealed: dropped unread
        assert r.publish(channel, sealer.seal(channel.encode(), data, time.time())) == 1
        if form == "env" and _needs_reply(value):
            reply = wait_reply(corr)
            if reply is None:
                unanswered.append(value)
                return
            codes[reply.get("err", "ok")] = codes.get(reply.get("err", "ok"), 0) + 1
            assert reply.get("t") == wire.REPLY and isinstance(reply.get("ok"), bool), reply
            assert reply["ok"] or reply.get("err") in KNOWN_CODES, reply

    one_each([("env", dict(env)) for env in KNOWN_BAD])
    # Fail in seconds, not at the suite's timeout, when the node answers nothing at all (e.g. it no longer
    # accepts envelopes in this form): every known-bad input has a reply address.
    assert len(unanswered) < len(KNOWN_BAD), f"the node answered none of the known-bad envelopes: {unanswered[:3]}"
    one()
    print("reply codes", codes, "examples", next(seq))
    assert c.alive("a")
    assert Echo.call(live, {"after": "fuzz"}, timeout=5)["node"] == "a"
    assert Echo.call("fresh-after-fuzz", {}, timeout=5)["node"] == "a"
    log = c.nodes["a"].output()
    for marker in ("Task exception was never retrieved", "Traceback"):
        assert marker not in log, log[log.index(marker) - 2000: log.index(marker) + 3000]
    assert not unanswered, f"{len(unanswered)} messages with a reply address got no answer, e.g. {unanswered[:5]}"
    sub.close()
    r.close()


def test_runtime_survives_garbage_on_its_reply_and_event_channels(chaos_factory):
    c = chaos_factory()
    c.start_node("a")
    rt = get_runtime()
    Echo.call("before", {})
    r = redis.Redis.from_url(REDIS_URL)
    junk = [b"", b"\xff\xfe", b"[]", b'{"t": 1}', b'{"t": "reply", "id": []}', b'{"t": "reply", "id": {"a": 1}}',
            b'{"t": "event", "e": "unregistered", "l": [], "p": {}}', b'{"t": "event", "e": "node_down", "node": []}',
            b'{"t": "event", "e": "unregistered", "l": "x", "p": "y", "epoch": "z"}']
    sealer = Sealer(envelope_keys(hub_settings()))
    for data in junk:
        for channel in (rt.client.reply_channel, rt.client.events_channel):
            r.publish(channel, data)  # unsealed: dropped unread
            r.publish(channel, sealer.seal(channel.encode(), data, time.time()))  # sealed: the client's own checks
    assert Echo.call("after", {}, timeout=5)["node"] == "a"
    r.close()
