"""The sync and foreign-loop fast paths on a real cluster: crashes, exits, timeouts, moves, a killed owner."""
import asyncio
import signal

import pytest

from processhub.exceptions import CallTimeout, ProcessCrashed
from processhub.runtime import get_runtime
from tests.cluster.harness import wait_for
from tests.conftest import needs_services
from tests.hubtest.processes import Crashy, Echo, Transient

pytestmark = [needs_services, pytest.mark.cluster]


def test_foreign_loop_fast_path(cluster3):
    async def body():
        loop = asyncio.get_running_loop()
        for i in range(6):
            r = await Echo.acall("fp1", {"i": i})
            assert r["echo"] == {"i": i}
        assert get_runtime().transport.loop_publisher(loop) is not None
        for _ in range(3):
            await Echo.acast("fp1", "c")
        r = await Echo.acall("fp1", {})
        assert r["casts"] == 3
        with pytest.raises(ProcessCrashed):
            await Crashy.acall("fpc", {"op": "crash"})
        await Crashy.acall("fpc", {})
        # exit -> a new call restarts it (transient exits normally -> stopped -> start again)
        await Transient.acall("fpt", {"op": "exit"})
        r = await Transient.acall("fpt", {})
        assert r["n"] == 1
        with pytest.raises(CallTimeout):
            await Echo.acall("fp1", {"op": "sleep", "s": 2}, timeout=0.5)
        return (await Echo.acall("fp1", {}))["node"]
    node = asyncio.run(body())
    # kill the owner; the fast path must fall back and find the new owner
    cluster3.kill(node, signal.SIGKILL)

    async def after():
        for _ in range(3):
            await Echo.acall("warm", {})
        return await Echo.acall("fp1", {}, timeout=15)
    r = asyncio.run(after())
    assert r["node"] != node


def test_sync_fast_path_follows_moves_and_stops(cluster3):
    ref = Echo.start("fs1")
    assert Echo.call("fs1", {})["node"] == ref.node
    Echo.stop("fs1")
    r = Echo.call("fs1", {})
    assert r["n"] == 1  # restarted fresh
    other = next(n for n in ("a", "b", "c") if n != r["node"])
    get_runtime().run_sync(get_runtime().client.move(Echo.label, "fs1", other))
    wait_for(lambda: Echo.call("fs1", {})["node"] == other, 10, "call after move")
    for i in range(20):
        Echo.cast("fs1", i)
    assert Echo.call("fs1", {})["casts"] == 20
    with pytest.raises(CallTimeout):
        Echo.call("fs1", {"op": "sleep", "s": 2}, timeout=0.5)
    assert Echo.call("fs1", {})["echo"] == {}
