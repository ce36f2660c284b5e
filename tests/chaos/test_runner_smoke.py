"""The chaos runner bounded for CI (issues 3 and 15): one seeded cycle of every fault kind on 3 nodes must find
nothing -- with a blocking plain ``def`` handler running on the victim of every fault (every pause at least), under
a strict verdict."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.chaos.runner import FAULTS
from tests.cluster.harness import ROOT
from tests.conftest import needs_services

pytestmark = [needs_services, pytest.mark.cluster, pytest.mark.chaos, pytest.mark.slow]


def row(out: str, name: str) -> str:
    found = re.search(rf"^\| {re.escape(name)}\s+\| (.*?)\s*\|$", out, re.M)
    assert found, f"summary row {name!r} missing"
    return found.group(1)


@pytest.fixture
def run_database():
    """The name of the runner's own database; dropped afterwards."""
    import psycopg

    from tests.chaos.runner import _with_db

    name = f"processhub_chaos_ci_{os.getpid()}"
    yield name
    with psycopg.connect(_with_db(os.environ["DATABASE_URL"], "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_runner_bounded_run_covers_every_fault_kind_and_passes(tmp_path, request, run_database):
    scale = float(request.config.getoption("--chaos-scale"))
    seed = int(os.environ.get("CHAOS_SEED", "20251122"))
    cmd = [sys.executable, "-m", "tests.chaos.runner", "--nodes", "3", "--processes", str(int(120 * scale)),
           "--duration", str(int(20 * scale)), "--cycles", "1", "--ttl", "1.5", "--gap", "0.5", "--blocking", "always",
           "--seed", str(seed), "--db-name", run_database, "--log-dir", str(tmp_path / "nodes")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCESSHUB_")}
    try:
        # Below pytest's own timeout, so that a run that hangs still shows what it printed.
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240 * scale)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(f"the bounded runner took more than {240 * scale:.0f}s\n{out[-6000:]}")
    print(done.stdout[-8000:])
    print(done.stderr[-3000:])
    out = done.stdout
    assert done.returncode == 0, f"runner exited {done.returncode}\n{out[-6000:]}\n{done.stderr[-3000:]}"
    assert "RESULT: PASS" in out
    for name in ("activations", "overlaps found", "lost processes", "call success rate outside faults",
                 "worst failover time"):
        row(out, name)
    injected = dict(re.findall(r"(\w+) (\d+)", row(out, "faults injected").split(":", 1)[1]))
    assert set(FAULTS) <= set(injected), f"fault kinds never injected: {set(FAULTS) - set(injected)}"
    assert row(out, "fault kinds covered").startswith(f"{len(FAULTS)} of {len(FAULTS)}")
    blocking = dict(re.findall(r"(\w+) (\d+)", row(out, "pauses with a blocking def handler").split(":", 1)[1]))
    assert int(blocking["pause"]) >= 1 and int(blocking["long_pause"]) >= 1, blocking
    assert row(out, "faults without recovery") == "0"  # a cluster that never recovered tests little after it
    assert row(out, "overlaps found") == "0"
    assert row(out, "late actions (after lease end)") == "0"
    assert row(out, "late starts") == "0"
    assert row(out, "recorder events lost") == "0"
    assert row(out, "unjudged events") == "0"
    assert re.match(r"0 of \d+", row(out, "lost processes"))
