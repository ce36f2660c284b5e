"""Who may read ``metrics_view`` (permission or bearer token), and what a scrape costs the database (issue 9)."""
import hmac
import os
import time

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from processhub import metrics
from tests.admin.rows import make_node, make_processes

pytestmark = pytest.mark.django_db

URL = "/metrics/"
TOKEN = "scrape-token-0123456789abcdef"


@pytest.fixture(autouse=True)
def fresh_counts():
    metrics.clear_registry_counts()
    yield
    metrics.clear_registry_counts()


@pytest.fixture
def with_token():
    with override_settings(PROCESSHUB={"METRICS_TOKEN": TOKEN}):
        yield


def user(username: str, *codenames: str, staff: bool = False) -> User:
    u = User.objects.create_user(username, password="pw", is_staff=staff)
    u.user_permissions.set(Permission.objects.filter(content_type__app_label="processhub", codename__in=codenames))
    return u


@pytest.mark.parametrize(
    "who, header, expected",
    [
        ("anonymous", None, 401),
        ("anonymous", f"Bearer {TOKEN}", 200),
        ("anonymous", "Bearer wrong-token", 401),
        ("anonymous", f"bearer  {TOKEN} ", 200),  # scheme case and spacing as RFC 6750 allows
        ("anonymous", f"Basic {TOKEN}", 401),  # not a bearer token
        ("staff", None, 403),  # staff alone is not enough
        ("staff", f"Bearer {TOKEN}", 200),
        ("permitted", None, 200),  # the permission is enough, staff or not
        ("permitted", "Bearer wrong-token", 401),  # a wrong token is refused whoever sends it
        ("superuser", None, 200),
    ],
)
def test_who_may_read_metrics(client, with_token, who, header, expected):
    if who == "staff":
        client.force_login(user("staff", staff=True))
    elif who == "permitted":
        client.force_login(user("prometheus-viewer", "view_metrics"))
    elif who == "superuser":
        client.force_login(User.objects.create_superuser("root", password="pw"))
    response = client.get(URL, headers={"Authorization": header} if header else {})
    assert response.status_code == expected, response.content
    if expected == 200:
        assert b"processhub_processes" in response.content
    else:
        assert b"processhub_" not in response.content
    if expected == 401:
        assert response["WWW-Authenticate"].startswith("Bearer")


def test_no_token_setting_accepts_no_token(client):
    assert client.get(URL, headers={"Authorization": "Bearer "}).status_code == 401
    assert client.get(URL, headers={"Authorization": "Bearer None"}).status_code == 401


def test_token_is_compared_in_constant_time(client, with_token, monkeypatch):
    seen = []
    compare = hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(metrics.hmac, "compare_digest", spy)
    assert client.get(URL, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert seen == [(TOKEN.encode(), TOKEN.encode())]


def test_scrapes_share_one_count_per_ttl(client, with_token):
    a = make_node("alpha")
    make_processes([a], 50, failed_every=5)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with CaptureQueriesContext(connection) as first:
        assert client.get(URL, headers=auth).status_code == 200
    assert len(first) == 2, [q["sql"] for q in first]  # one GROUP BY over processes, one over nodes
    make_processes([a], 50, prefix="more")
    with CaptureQueriesContext(connection) as later:
        for _ in range(20):
            assert client.get(URL, headers=auth).status_code == 200
    assert len(later) == 0, [q["sql"] for q in later]


def test_counts_are_read_again_after_the_ttl():
    a = make_node("alpha")
    make_processes([a], 10)
    t0 = 1000.0
    processes, nodes = metrics.registry_counts(now=t0)
    assert sum(n for *_, n in processes) == 10 and nodes == [("up", 1)]
    make_processes([a], 5, prefix="more")
    assert sum(n for *_, n in metrics.registry_counts(now=t0 + metrics.REGISTRY_COUNTS_TTL - 0.1)[0]) == 10
    with CaptureQueriesContext(connection) as recount:
        fresh = metrics.registry_counts(now=t0 + metrics.REGISTRY_COUNTS_TTL)[0]
    assert sum(n for *_, n in fresh) == 15 and len(recount) == 2


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"), reason="needs PostgreSQL")
def test_scraping_100k_rows_costs_one_count_per_ttl(client, with_token):
    nodes = [make_node(f"node{i:02d}", lease_left=3600) for i in range(10)]
    make_processes(nodes, 100_000, labels=tuple(f"hubtest.Class{i}" for i in range(8)), failed_every=97)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    t0 = time.perf_counter()
    with CaptureQueriesContext(connection) as first:
        assert client.get(URL, headers=auth).status_code == 200
    counted = time.perf_counter() - t0
    t0 = time.perf_counter()
    with CaptureQueriesContext(connection) as later:
        for _ in range(50):
            assert client.get(URL, headers=auth).status_code == 200
    cached = (time.perf_counter() - t0) / 50
    print(f"\nmetrics scrape with 100,000 rows: {counted * 1000:.1f} ms counting, {cached * 1000:.1f} ms cached")
    assert len(first) == 2 and len(later) == 0
