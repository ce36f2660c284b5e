"""Fixtures of the chaos suite: clusters with per-node proxies, recorders and their verdicts."""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest
import redis
from django.conf import settings as django_settings
from django.test import override_settings

from processhub.runtime import reset_runtime
from tests.chaos.recording import (
    Allow,
    Verdict,
    clear_lost,
    judge,
    lost_events,
    read_events,
    read_lease_ends,
    recorder_arg,
)
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
    """One Redis list of recorder events for one test, judged against the test database's leases."""

    def __init__(self) -> None:
        self.key = f"chaos:events:{uuid.uuid4().hex}"
        self.redis = redis.Redis.from_url(REDIS_URL)

    def arg(self, pid: str, tick: float = 0.2) -> dict:
        return recorder_arg(pid, self.key, tick)

    def events(self) -> list[dict]:
        return read_events(self.redis, self.key)

    def lost(self) -> list[dict]:
        return lost_events(self.key)

    def judge(self, expected: Iterable[str] | None = None, alive_since: float | None = None,
              allow: Iterable[Allow] = ()) -> Verdict:
        """The strict verdict: late actions fail unless ``allow`` names them (see tests/chaos/recording.py).

        NODE_TTL and LEASE_SAFETY_MARGIN come from the settings in force (the
        cluster's or the embedded node's), the lease ends from the test database,
        read after the events so that every event read is covered by them.
        """
        events = self.events()
        hub = {**{"NODE_TTL": 5.0, "LEASE_SAFETY_MARGIN": 1.0}, **(getattr(django_settings, "PROCESSHUB", None) or {})}
        ends = read_lease_ends(float(hub["NODE_TTL"]))
        return judge(events, ends, margin=float(hub["LEASE_SAFETY_MARGIN"]), expected=expected,
                     alive_since=alive_since, allow=allow, unrecorded=self.lost())

    def wait_alive(self, pids: Iterable[str], since: float, timeout: float) -> None:
        """Wait until every pid has recorded an event at/after ``since`` (wall clock) on a live incarnation.

        Events of incarnations whose lease has ended do not count: a zombie's
        handler still acting is no sign that its process runs again.
        """
        from django.db.models.functions import Now

        from processhub.models import Node, NodeStatus
        from tests.cluster.harness import wait_for

        pids = set(pids)

        def all_alive():
            events = self.events()
            live = set(Node.objects.exclude(status=NodeStatus.DOWN).filter(lease_expires_at__gt=Now())
                       .values_list("id", flat=True))
            seen = {e["pid"] for e in events if e["t"] >= since and e.get("nid") in live}
            missing = pids - seen
            if missing:
                raise AssertionError(f"{len(missing)} not alive, e.g. {sorted(missing)[:5]}")
            return True

        wait_for(all_alive, timeout, f"{len(pids)} recorders to tick after {since:.3f}")

    def close(self, keep_in: str | None = None) -> None:
        if keep_in:  # CHAOS_KEEP_EVENTS=<dir>: the raw events of every test, for a post-mortem
            Path(keep_in).mkdir(parents=True, exist_ok=True)
            (Path(keep_in) / f"{self.key.rsplit(':', 1)[-1]}.json").write_text(
                json.dumps({"events": self.events(), "lost": self.lost()}))
        self.redis.delete(self.key)
        self.redis.close()
        clear_lost(self.key)


@pytest.fixture
def recording(request):
    rec = Recording()
    yield rec
    keep = os.environ.get("CHAOS_KEEP_EVENTS")
    rec.close(os.path.join(keep, request.node.name) if keep else None)


