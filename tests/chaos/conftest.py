"""Fixtures of the chaos suite: clusters with per-node proxies, recorders and their verdicts."""
from __future__ import annotations

import uuid
from collections.abc import Iterable

import pytest
import redis
from django.test import override_settings

from processhub.runtime import reset_runtime
from tests.chaos.recording import Verdict, judge, read_events, recorder_arg
from tests.conftest import REDIS_URL, _redis_ok, test_database_url


@pytest.fixture
def chaos_scale(request) -> float:
    return float(request.config.getoption("--chaos-scale"))


@pytest.fixture
def chaos_factory(transactional_db, tmp_path):
    """Build ChaosClusters on this test's database; nodes and proxies are stopped at teardown."""
    if not _redis_ok():
        pytest.skip("Redis is not reachable")
    from tests.chaos.cluster import ChaosCluster

    made: list[ChaosCluster] = []
    overrides = []

    def make(settings: dict | None = None, env: dict | None = None) -> ChaosCluster:
        c = ChaosCluster(test_database_url(), REDIS_URL, settings, tmp_path / f"cluster{len(made)}", env)
        made.append(c)
        ov = override_settings(PROCESSHUB=c.client_settings())
        ov.enable()
        overrides.append(ov)
        reset_runtime()
        return c

    yield make
    reset_runtime()
    for c in made:
        c.close()
    for ov in reversed(overrides):
        ov.disable()


class Recording:
    """One Redis list of recorder events for one test."""

    def __init__(self) -> None:
        self.key = f"chaos:events:{uuid.uuid4().hex}"
        self.redis = redis.Redis.from_url(REDIS_URL)

    def arg(self, pid: str, tick: float = 0.2) -> dict:
        return recorder_arg(pid, self.key, tick)

    def events(self) -> list[dict]:
        return read_events(self.redis, self.key)

    def judge(self, expected: Iterable[str] | None = None, alive_since: float | None = None) -> Verdict:
        return judge(self.events(), expected, alive_since)

    def wait_alive(self, pids: Iterable[str], since: float, timeout: float) -> None:
        """Wait until every pid has recorded an event under a valid lease at/after ``since`` (wall clock)."""
        from tests.cluster.harness import wait_for

        pids = set(pids)

        def all_alive():
            seen = {e["pid"] for e in self.events() if e["t"] >= since and e.get("ok", True)}
            missing = pids - seen
            if missing:
                raise AssertionError(f"{len(missing)} not alive, e.g. {sorted(missing)[:5]}")
            return True

        wait_for(all_alive, timeout, f"{len(pids)} recorders to tick after {since:.3f}")

    def close(self) -> None:
        self.redis.delete(self.key)
        self.redis.close()


@pytest.fixture
def recording():
    rec = Recording()
    yield rec
    rec.close()


