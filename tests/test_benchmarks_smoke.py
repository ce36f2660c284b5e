"""Keeps ``python -m benchmarks`` working: the quick run prints every row. Times are never asserted.

Benchmarks are not timed unit tests (issue 4): this only checks that the script
sets up its cluster, measures each figure, cleans up, and reports in both formats.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run import ORDER, PHASES, Sizes, table
from tests.conftest import needs_services

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCESSHUB_")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=420)


@needs_services
@pytest.mark.cluster
@pytest.mark.slow
def test_quick_run_reports_every_row_as_json_and_cleans_up():
    import psycopg

    from benchmarks.cluster import with_database

    out = _run("--quick", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    rows = {r["key"]: r for r in report["rows"]}
    assert list(rows) == ORDER  # every figure, in table order
    for key, row in rows.items():
        assert isinstance(row["value"], (int, float)) and row["value"] >= 0, (key, row)
        assert (row["ok"] is None) == (row["target"] == "-"), (key, row)  # pass/miss exactly where a target is
    assert report["meta"]["sizes"]["activations"] == Sizes.quick().activations
    # The yardstick of a row is measured in the same run: where a row has one, it has a value.
    for key, row in rows.items():
        assert (row["yardstick"] == "-") == (row["yard_value"] is None), (key, row)
    # Nothing left behind: the per-run database is dropped.
    db = json.loads(out.stdout)["meta"]["database"]
    with psycopg.connect(with_database(os.environ["DATABASE_URL"], "postgres"), autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone() is None


@needs_services
@pytest.mark.cluster
def test_one_phase_prints_the_table_with_a_result_column():
    out = _run("--quick", "--only", "transports")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("| figure") and lines[0].rstrip().endswith("| result |")
    assert any("RedisPubSubChannelLayer" in line for line in lines)


def test_bad_arguments_are_refused():
    out = _run("--only", "nonsense")
    assert out.returncode != 0 and "unknown phase" in out.stderr
    out = _run("--set", "nope=1")
    assert out.returncode != 0 and "unknown size" in out.stderr


def test_table_marks_pass_miss_and_info():
    from benchmarks.run import Row

    text = table([Row("a", "fast", 1.0, "ms", "raw", 2.0, 0.5, "<= 1x", True),
                  Row("b", "slow", 3.0, "ms", "raw", 1.0, 3.0, "<= 1x", False),
                  Row("c", "plain", 7.0, "/s"),
                  Row("d", "mac", 9.5, "us", "call p50", 0.31, 0.0306, "<= 5%", True, yard_unit="ms", ratio_unit="%")])
    body = text.splitlines()[2:6]
    assert [line.rstrip(" |").rsplit("|", 1)[1].strip() for line in body] == ["pass", "MISS", "info", "pass"]
    cells = [c.strip() for c in body[3].strip(" |").split("|")]
    assert cells[1:4] == ["9.5 us", "call p50: 0.310 ms", "3.1%"]
    assert set(PHASES) >= {"calls", "failover", "failover_scale", "listing", "rolling", "fanout"}
    assert PHASES[-1] == "fanout"  # it starts a node and web servers of its own: last
