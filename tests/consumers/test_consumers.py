"""ProcessConsumer with Channels' WebsocketCommunicator, on the embedded hub: every failure is a JSON error frame,
the socket stays open, and pushes from the process reach every socket of it (issue 12)."""
import asyncio
import logging
import uuid
from types import SimpleNamespace

import pytest
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.core.exceptions import PermissionDenied
from django.test import override_settings
from django.urls import path

from processhub import push
from processhub.consumers import GENERIC_ERROR, ProcessConsumer
from tests.conftest import REDIS_URL, _redis_ok

from .processes import Pusher, SyncPusher

IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
REDIS_LAYER = {"default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                           "CONFIG": {"hosts": [REDIS_URL]}}}
WAIT = 5  # seconds for any frame


class PusherConsumer(ProcessConsumer):
    process_class = Pusher
    call_ops = {"echo", "crash", "sleep", "push", "broken"}
    cast_ops = {"poke"}

    def message_for(self, frame):
        if frame["op"] == "broken":
            raise KeyError("a bug in message_for")
        if frame.get("secret"):
            raise PermissionDenied("no secrets here")
        return super().message_for(frame)


class SyncPusherConsumer(ProcessConsumer):
    process_class = SyncPusher


class NotStartingConsumer(PusherConsumer):
    start_process = False


class OneAtATimeConsumer(PusherConsumer):
    max_pending = 1


class GuardedConsumer(PusherConsumer):
    def get_process_arg(self):
        if self.scope["url_route"]["kwargs"]["name"].startswith("private"):
            raise PermissionDenied
        return super().get_process_arg()


def with_user(app, user):
    async def wrapped(scope, receive, send):
        return await app({**scope, "user": user}, receive, send)

    return wrapped


ROUTES = URLRouter([
    path("ws/pusher/<str:name>/", PusherConsumer.as_asgi()),
    path("ws/sync/<str:name>/", SyncPusherConsumer.as_asgi()),
    path("ws/lazy/<str:name>/", NotStartingConsumer.as_asgi()),
    path("ws/one/<str:name>/", OneAtATimeConsumer.as_asgi()),
    path("ws/guarded/<str:name>/", GuardedConsumer.as_asgi()),
])


@pytest.fixture
def hub(embedded):
    with override_settings(CHANNEL_LAYERS=IN_MEMORY):
        yield embedded


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def connected(url: str, user=None) -> WebsocketCommunicator:
    app = ROUTES if user is None else with_user(ROUTES, user)
    comm = WebsocketCommunicator(app, url)
    ok, code = await comm.connect(timeout=WAIT)
    assert ok, code
    return comm


async def ask(comm: WebsocketCommunicator, frame) -> dict:
    if isinstance(frame, dict):
        await comm.send_json_to(frame)
    else:
        await comm.send_to(text_data=frame) if isinstance(frame, str) else await comm.send_to(bytes_data=frame)
    return await comm.receive_json_from(timeout=WAIT)


def name() -> str:
    return uuid.uuid4().hex[:12]


def test_a_frame_is_a_call_and_its_reply_carries_the_ref(hub):
    async def go():
        comm = await connected(f"/ws/pusher/{name()}/")
        answer = await ask(comm, {"op": "echo", "x": 1, "ref": "r1"})
        assert answer == {"reply": {"echo": {"op": "echo", "x": 1}, "casts": 0, "node": "embedded"}, "ref": "r1"}
        await comm.disconnect()

    run(go())


@pytest.mark.parametrize("frame, error, words", [
    ("{not json", "InvalidMessage", "not JSON"),
    (b"\x00binary", "InvalidMessage", "binary"),
    ("[1, 2]", "InvalidMessage", "JSON object"),
    ({"x": 1, "ref": 4}, "InvalidMessage", '"op"'),
    ({"op": 7, "ref": 4}, "InvalidMessage", '"op"'),
    ({"op": "drop_tables", "ref": 4}, "UnknownOp", "drop_tables"),
    ({"op": "echo", "secret": 1, "ref": 4}, "PermissionDenied", "no secrets"),
])
def test_refused_frames_get_an_error_frame_and_the_socket_stays_open(hub, frame, error, words):
    async def go():
        comm = await connected(f"/ws/pusher/{name()}/")
        answer = await ask(comm, frame)
        assert answer["error"] == error and words in answer["message"], answer
        assert answer["ref"] == (frame.get("ref") if isinstance(frame, dict) else None)
        assert (await ask(comm, {"op": "echo", "ref": 5}))["ref"] == 5  # still open, still served
        await comm.disconnect()

    run(go())


def test_a_crashing_handler_is_an_error_frame_with_details_for_staff_only(hub):
    async def go():
        pid = name()
        visitor = await connected(f"/ws/pusher/{pid}/")
        answer = await ask(visitor, {"op": "crash", "ref": 1})
        assert answer == {"error": "ProcessCrashed", "message": GENERIC_ERROR, "ref": 1}
        assert "casts" in (await ask(visitor, {"op": "echo", "ref": 2}))["reply"]  # restarted, socket open
        staff = await connected(f"/ws/pusher/{pid}/", user=SimpleNamespace(is_staff=True))
        answer = await ask(staff, {"op": "crash", "ref": 3})
        assert answer["error"] == "ProcessCrashed" and answer["exc_type"] == "ValueError"
        assert "boom requested" in answer["message"]
        await visitor.disconnect()
        await staff.disconnect()

    run(go())


def test_a_bug_in_a_hook_is_an_error_frame(hub, caplog):
    logger = logging.getLogger("processhub.consumers")  # "processhub" does not propagate to caplog's root handler
    logger.addHandler(caplog.handler)

    async def go():
        comm = await connected(f"/ws/pusher/{name()}/")
        assert await ask(comm, {"op": "broken", "ref": 1}) == {"error": "KeyError", "message": GENERIC_ERROR, "ref": 1}
        assert (await ask(comm, {"op": "echo", "ref": 2}))["ref"] == 2
        await comm.disconnect()

    try:
        run(go())
    finally:
        logger.removeHandler(caplog.handler)
    assert "message_for() failed" in caplog.text


def test_a_process_that_is_not_running_is_an_error_frame(hub):
    async def go():
        pid = name()
        comm = await connected(f"/ws/lazy/{pid}/")
        assert await ask(comm, {"op": "echo", "ref": 1}) == {"error": "ProcessNotRunning", "message": GENERIC_ERROR,
                                                             "ref": 1}
        assert await ask(comm, {"op": "poke", "ref": 2}) == {"error": "ProcessNotRunning", "message": GENERIC_ERROR,
                                                             "ref": 2}
        await Pusher.astart(pid)
        assert (await ask(comm, {"op": "echo", "ref": 3}))["reply"]["casts"] == 0
        await comm.disconnect()

    run(go())


def test_cast_ops_are_casts(hub):
    async def go():
        comm = await connected(f"/ws/pusher/{name()}/")
        assert await ask(comm, {"op": "poke", "ref": 1}) == {"reply": None, "ref": 1}
        for _ in range(50):
            reply = (await ask(comm, {"op": "echo"}))["reply"]
            if reply["casts"] == 1:
                break
            await asyncio.sleep(0.02)
        assert reply["casts"] == 1
        await comm.disconnect()

    run(go())


def test_frames_are_answered_in_order(hub):
    async def go():
        comm = await connected(f"/ws/pusher/{name()}/")
        await comm.send_json_to({"op": "sleep", "s": 0.2, "ref": 0})
        for ref in range(1, 6):
            await comm.send_json_to({"op": "echo", "ref": ref})
        assert [(await comm.receive_json_from(WAIT))["ref"] for _ in range(6)] == list(range(6))
        await comm.disconnect()

    run(go())


def test_too_many_waiting_frames_are_refused_with_busy(hub):
    async def go():
        comm = await connected(f"/ws/one/{name()}/")
        await comm.send_json_to({"op": "sleep", "s": 0.5, "ref": 0})  # taken by the worker at once
        await asyncio.sleep(0.1)
        for ref in range(1, 4):
            await comm.send_json_to({"op": "echo", "ref": ref})  # 1 waits; 2 and 3 are refused
        answers = [await comm.receive_json_from(WAIT) for _ in range(4)]
        by_ref = {a["ref"]: a for a in answers}
        assert by_ref[2]["error"] == by_ref[3]["error"] == "Busy"
        assert "reply" in by_ref[0] and "reply" in by_ref[1]
        await comm.disconnect()

    run(go())


def test_a_refused_argument_refuses_the_handshake(hub):
    async def go():
        comm = WebsocketCommunicator(ROUTES, "/ws/guarded/private-x/")
        ok, code = await comm.connect(timeout=WAIT)
        assert (ok, code) == (False, 4403)
        # An id the hub refuses (longer than MAX_ID_LENGTH) is refused by the first frame.
        comm = await connected("/ws/pusher/" + "x" * 300 + "/")
        assert (await ask(comm, {"op": "echo", "ref": 1}))["error"] == "InvalidArgument"
        await comm.disconnect()

    run(go())


def _push_reaches_every_socket_then_leaves_the_group():
    async def go():
        pid = name()
        a = await connected(f"/ws/pusher/{pid}/")
        b = await connected(f"/ws/pusher/{pid}/")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await a.send_json_to({"op": "push", "data": {"hello": 1}, "ref": 1})
        got_a = [await a.receive_json_from(WAIT) for _ in range(2)]
        assert {"push": {"hello": 1}} in got_a and any(f.get("ref") == 1 for f in got_a)
        assert await b.receive_json_from(WAIT) == {"push": {"hello": 1}}
        assert loop.time() - t0 < 1.0
        # A push on its own, long after the cast that caused it was answered.
        await a.send_json_to({"op": "poke", "push_after": 0.3, "ref": 9})
        assert await a.receive_json_from(WAIT) == {"reply": None, "ref": 9}
        t0 = loop.time()
        assert await b.receive_json_from(WAIT) == {"push": "later"}
        assert await a.receive_json_from(WAIT) == {"push": "later"}
        assert loop.time() - t0 < 1.0
        # From a plain def handler (a worker thread of the node), through the runtime's loop.
        s = await connected(f"/ws/sync/{pid}/")
        assert await ask(s, {"op": "x", "data": [1, 2], "ref": 2}) in ({"push": [1, 2]}, {"reply": "pushed", "ref": 2})
        await s.disconnect()
        # A socket that left gets nothing; the one still there does.
        await b.disconnect()
        group = push.channel_group(Pusher.label, pid)
        await a.send_json_to({"op": "push", "data": "again", "ref": 3})
        got = [await a.receive_json_from(WAIT) for _ in range(2)]
        assert {"push": "again"} in got
        assert await b.receive_nothing(0.2)
        layer = get_channel_layer()
        if isinstance(layer, InMemoryChannelLayer):  # the group holds a's channel alone
            assert len(layer.groups[group]) == 1
        await a.disconnect()

    run(go())


def test_pushes_over_the_in_memory_layer(hub):
    _push_reaches_every_socket_then_leaves_the_group()


def test_pushes_over_the_redis_layer(embedded):
    if not _redis_ok():
        pytest.skip("Redis is not reachable")
    with override_settings(CHANNEL_LAYERS=REDIS_LAYER):
        _push_reaches_every_socket_then_leaves_the_group()
