"""What every authenticated Redis must carry: two nodes, calls and casts (sync and async), a SIGKILL failover."""
from __future__ import annotations

import asyncio
import signal
import time

from processhub.exceptions import ProcessHubError
from processhub.runtime import reset_runtime
from tests.cluster.harness import FAST, Cluster, wait_for
from tests.hubtest.processes import Echo

# Node start-up is a Django boot on a shared 2-core machine; failover is NODE_TTL + a reconcile, plus noise.
UP_TIMEOUT = 30.0
FAILOVER_TIMEOUT = FAST["NODE_TTL"] + FAST["RECONCILE_INTERVAL"] + 4.0


def start_nodes(cluster: Cluster, *names: str) -> None:
    for name in names:
        cluster.start_node(name, wait=False)
    for name in names:
        cluster.wait_up(name, timeout=UP_TIMEOUT)


def exercise(cluster: Cluster, key: str) -> dict:
    """Two nodes up; start, call, cast (sync and async); SIGKILL the owner; the process comes back elsewhere.

    Returns timings for the test's report.
    """
    t0 = time.monotonic()
    start_nodes(cluster, "a", "b")
    assert cluster.live_names() == {"a", "b"}
    timings = {"two nodes up": time.monotonic() - t0}

    ref = Echo.start(key)
    assert ref.created and ref.node in {"a", "b"}
    reply = Echo.call(key, {"op": "where", "sync": True})
    assert (reply["node"], reply["epoch"]) == (ref.node, ref.epoch)
    Echo.cast(key, "sync cast")

    async def async_side():
        got = await Echo.acall(key, {"async": True})
        await Echo.acast(key, "async cast")
        return got

    reply = asyncio.run(async_side())
    assert reply["node"] == ref.node and reply["echo"] == {"async": True}
    wait_for(lambda: Echo.call(key, {})["casts"] == 2, 5, "both casts to arrive")

    killed = time.monotonic()
    cluster.kill(ref.node, signal.SIGKILL)
    survivor = ({"a", "b"} - {ref.node}).pop()

    def moved():
        try:
            got = Echo.call(key, {"after": "failover"}, timeout=1)
        except ProcessHubError:
            return None
        return got if got["node"] == survivor and got["epoch"] > ref.epoch else None

    wait_for(moved, FAILOVER_TIMEOUT, f"{key} to come back on {survivor} after SIGKILL of {ref.node}")
    timings["failover"] = time.monotonic() - killed
    return timings


def client_error(settings_override) -> tuple[BaseException, list[str]]:
    """What a client of these (wrong) settings gets from its first call, and the runtime threads it left behind.

    The threads are stopped here, so that a leak fails one assertion instead of
    spinning in the background for the rest of the run.
    """
    import threading

    from django.test import override_settings

    before = set(threading.enumerate())
    with override_settings(PROCESSHUB=settings_override):
        reset_runtime()
        try:
            Echo.call("never", {}, timeout=2)
        except Exception as exc:  # noqa: BLE001 - whatever it is, the test inspects its type and text
            error = exc
        else:
            raise AssertionError("a client with a wrong password could call a process")
        finally:
            reset_runtime()
    leaked = [t for t in threading.enumerate() if t not in before and t.name == "processhub-runtime"]
    for thread in leaked:
        # processhub.runtime._start_thread_runtime runs _serve(loop, ready) in this thread.
        loop = getattr(thread, "_args", (None,))[0]
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    return error, [t.name for t in leaked]


def no_password_in(text: str, password: str) -> None:
    """Fail, showing the offending lines with the password blotted out, if ``password`` occurs in ``text``."""
    from urllib.parse import quote

    spellings = {password, quote(password, safe=""), quote(password)}
    bad = [line for line in text.splitlines() if any(s in line for s in spellings)]
    if bad:
        for s in sorted(spellings, key=len, reverse=True):
            bad = [line.replace(s, "<PASSWORD>") for line in bad]
        raise AssertionError("the password occurs in the output:\n" + "\n".join(bad[:20]))
