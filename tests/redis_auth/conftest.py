"""Throwaway Redis servers for the authentication tests, one of each kind per module, stopped at teardown."""
from __future__ import annotations

import pytest

from tests.redis_auth import passwords as pw
from tests.redis_auth import servers

MASTER_NAME = "hubmaster"
# What the hub's ACL user may do: found by tests/redis_auth/test_auth.py (see the README, "Redis: authentication").
HUB_USER = "hub"
HUB_GRANT = "resetchannels &{prefix}.* +publish +subscribe +unsubscribe +ping"


@pytest.fixture(scope="module")
def redis_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("redis")


@pytest.fixture(scope="module")
def requirepass_redis(redis_dir):
    server = servers.requirepass_server(redis_dir, pw.REQUIREPASS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_files(redis_dir):
    return servers.make_tls_files(redis_dir)


@pytest.fixture(scope="module")
def tls_redis(redis_dir, tls_files):
    server = servers.tls_server(redis_dir, tls_files, pw.TLS)
    yield server
    server.stop()


@pytest.fixture
def stopping():
    """Servers a test starts itself (ACL servers need the cluster's prefix): stopped at teardown."""
    started: list[servers.RedisServer] = []
    yield started
    for server in started:
        server.stop()
