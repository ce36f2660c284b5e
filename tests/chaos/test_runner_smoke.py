"""The chaos runner bounded for CI (issue 3): a 30 s run on 3 nodes (~45 s in all) must find nothing."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.cluster.harness import ROOT
from tests.conftest import needs_services

pytestmark = [needs_services, pytest.mark.cluster, pytest.mark.chaos, pytest.mark.slow]


def test_runner_bounded_run_passes_with_a_summary(tmp_path, request):
    scale = float(request.config.getoption("--chaos-scale"))
    seed = int(os.environ.get("CHAOS_SEED", "20251122"))
    cmd = [sys.executable, "-m", "tests.chaos.runner", "--nodes", "3", "--processes", str(int(150 * scale)),
           "--duration", str(int(30 * scale)), "--ttl", "2", "--seed", str(seed),
           "--db-name", f"processhub_chaos_ci_{os.getpid()}", "--log-dir", str(tmp_path / "nodes")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCESSHUB_")}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240 * scale)
    print(done.stdout[-6000:])
    print(done.stderr[-3000:])
    assert done.returncode == 0, f"runner exited {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    out = done.stdout
    assert "RESULT: PASS" in out
    for row in ("activations", "overlaps found", "lost processes", "call success rate outside faults",
                "worst failover time"):
        assert re.search(rf"\| {row}\s+\|", out), f"summary row {row!r} missing"
    assert re.search(r"\| overlaps found\s+\| 0\s+\|", out)
    assert re.search(r"\| lost processes\s+\| 0 of \d+", out)
    faults = int(re.search(r"\| faults injected\s+\| (\d+):", out).group(1))
    assert faults >= 3, "the bounded run injected too few faults to mean anything"
