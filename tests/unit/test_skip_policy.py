"""The CI skip policy of tests/conftest.py: with CI=true a skip outside ALLOWED_SKIPS fails its test."""
from types import SimpleNamespace

import pytest

from tests.conftest import _fail_unallowed_skip, allowed_skip


def skipped(nodeid: str, reason: str) -> SimpleNamespace:
    return SimpleNamespace(nodeid=nodeid, outcome="skipped", skipped=True, longrepr=("file.py", 1, reason))


@pytest.mark.parametrize("nodeid,reason,allowed", [
    ("tests/admin/test_browser.py::test_pages", "Skipped: needs Debian's chromium (missing)", True),
    ("tests/admin/test_browser.py::test_pages", "Skipped: needs selenium", False),  # a requirement, never allowed
    ("tests/unit/test_chaos_tools.py::test_ipv6_loopback_listen", "Skipped: no IPv6", True),
    ("tests/unit/test_chaos_tools.py::test_ipv6_loopback_listen_more", "Skipped: no IPv6", False),
    ("tests/chaos/test_scenarios.py::test_x", "Skipped: Redis is not reachable", False),
    ("tests/cluster/test_failover.py::test_y", "needs DATABASE_URL (PostgreSQL) and REDIS_URL", False),
])
def test_allow_list(nodeid, reason, allowed):
    assert (allowed_skip(nodeid, reason) is not None) is allowed


@pytest.mark.parametrize("ci,outcome", [("true", "failed"), ("1", "failed"), ("", "skipped"), ("false", "skipped")])
def test_a_skip_outside_the_list_fails_only_in_ci(monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    report = skipped("tests/chaos/test_scenarios.py::test_x", "Skipped: Redis is not reachable")
    _fail_unallowed_skip(report)
    assert report.outcome == outcome
    if outcome == "failed":
        assert "Redis is not reachable" in report.longrepr and "ALLOWED_SKIPS" in report.longrepr


def test_an_allowed_skip_stays_a_skip_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    report = skipped("tests/admin/test_browser.py::test_pages", "Skipped: chromium missing")
    _fail_unallowed_skip(report)
    assert report.outcome == "skipped"
