"""Redis behind Sentinel: the hub finds the master through a password-protected sentinel and follows a failover.

One master and one replica, both with ``requirepass``, watched by one sentinel
(quorum 1) that has a password of its own. ``REDIS_URL`` carries the master's
password (its host is not used), ``REDIS_SENTINELS``/``REDIS_SENTINEL_MASTER``
say where to ask, ``REDIS_SENTINEL_OPTIONS`` how to log in to the sentinels.
"""
from __future__ import annotations

import socket
import time

import pytest

from processhub.exceptions import ProcessHubError
from processhub.runtime import reset_runtime
from tests.conftest import needs_services
from tests.hubtest.processes import Echo
from tests.redis_auth import passwords as pw
from tests.redis_auth import servers
from tests.redis_auth.conftest import MASTER_NAME
from tests.redis_auth.scenario import UP_TIMEOUT, exercise, no_password_in, start_nodes

pytestmark = [needs_services, pytest.mark.cluster, pytest.mark.timeout(120)]

# A failover of this sentinel: down-after 1 s, then promotion. The hub then needs a reconnect (its ping
# watchdog notices a dead link within 3 pings of 1 s) and a call: 5 s in all, with scheduling noise.
SWITCH_TIMEOUT = 10.0
FOLLOW_TIMEOUT = 5.0


class Sentinelled:
    def __init__(self, workdir):
        self.master = servers.master_server(workdir, pw.SENTINEL_MASTER, "master")
        self.replica = servers.master_server(workdir, pw.SENTINEL_MASTER, "replica", replica_of=self.master)
        self.sentinel = None
        servers.wait_until(lambda: self.replica.client().info("replication")["master_link_status"] == "up",
                           5, "the replica to sync")
        self.sentinel = servers.sentinel_server(workdir, self.master, MASTER_NAME, pw.SENTINEL_MASTER, pw.SENTINEL)
        # Sentinel promotes only a replica it has seen healthy (INFO refreshed, link ok).
        servers.wait_until(lambda: [r for r in self.sentinel.client().sentinel_slaves(MASTER_NAME)
                                    if r["master-link-status"] == "ok" and not r["is_disconnected"]],
                           5, "the sentinel to know the replica")

    def master_port(self) -> int:
        """The master's port as the hub learns it: redis-py's discover_master (SENTINEL MASTERS).

        (SENTINEL GET-MASTER-ADDR-BY-NAME names the promoted replica a moment earlier,
        while the failover still runs; SENTINEL MASTERS switches at its end.)
        """
        from redis.sentinel import Sentinel

        found = Sentinel([("127.0.0.1", self.sentinel.port)], sentinel_kwargs={
            "password": pw.SENTINEL, "socket_timeout": 2}).discover_master(MASTER_NAME)
        return int(found[1])

    def settings(self) -> dict:
        return {"REDIS_SENTINELS": [f"127.0.0.1:{self.sentinel.port}"], "REDIS_SENTINEL_MASTER": MASTER_NAME,
                "REDIS_SENTINEL_OPTIONS": {"password": pw.SENTINEL}}

    def url(self, password: str = pw.SENTINEL_MASTER) -> str:
        # The host is not used: the sentinels name the master.
        return f"redis://:{pw.q(password)}@{MASTER_NAME}:6379/0"

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.master):
            if server is not None:
                server.stop()


@pytest.fixture
def sentinelled(tmp_path):
    s = Sentinelled(tmp_path / "redis")
    yield s
    s.stop()


def test_sentinel(cluster_factory, sentinelled):
    cluster = cluster_factory(redis_url=sentinelled.url(), settings=sentinelled.settings())
    print(exercise(cluster, "sent1"))
    no_password_in(cluster.logs(), pw.SENTINEL_MASTER)
    no_password_in(cluster.logs(), pw.SENTINEL)


def _served(key: str, nodes: set[str]) -> dict | None:
    try:
        got = Echo.call(key, {}, timeout=1)
    except ProcessHubError:
        return None
    return got if got["node"] in nodes else None


def test_master_crash_is_followed(cluster_factory, sentinelled):
    """SIGKILL the master: the sentinel promotes the replica, and nodes and clients reconnect to it."""
    cluster = cluster_factory(redis_url=sentinelled.url(), settings=sentinelled.settings())
    start_nodes(cluster, "a", "b")
    ref = Echo.start("crash1")
    assert Echo.call("crash1", {})["node"] == ref.node
    old = sentinelled.master.port
    sentinelled.master.kill()
    t0 = time.monotonic()
    servers.wait_until(lambda: sentinelled.master_port() == sentinelled.replica.port, SWITCH_TIMEOUT,
                       "the sentinel to promote the replica")
    switched = time.monotonic() - t0
    servers.wait_until(lambda: _served("crash1", {ref.node}), FOLLOW_TIMEOUT,
                       f"calls to work again after the master on port {old} died")
    print({"promoted after": switched, "calls work after": time.monotonic() - t0})
    # A fresh client (a new web process) finds the new master as well.
    reset_runtime()
    assert Echo.call("crash1", {})["node"] == ref.node
    assert set(cluster.live_names()) == {"a", "b"}


def test_sentinel_failover_is_followed(cluster_factory, sentinelled):
    """SENTINEL FAILOVER with the old master alive: everyone must end up on the new master, quickly."""
    cluster = cluster_factory(redis_url=sentinelled.url(), settings=sentinelled.settings())
    start_nodes(cluster, "a", "b")
    ref = Echo.start("fo1")
    assert Echo.call("fo1", {})["node"] == ref.node
    sentinelled.sentinel.client().execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
    t0 = time.monotonic()
    servers.wait_until(lambda: sentinelled.master_port() == sentinelled.replica.port, SWITCH_TIMEOUT,
                       "the sentinel to promote the replica")
    switched = time.monotonic() - t0
    # A fresh client asks the sentinel, so it talks to the new master: the nodes must be there too.
    reset_runtime()
    servers.wait_until(lambda: _served("fo1", {ref.node}), FOLLOW_TIMEOUT,
                       "a fresh client to reach the nodes after SENTINEL FAILOVER")
    print({"promoted after": switched, "a fresh client reaches the nodes after": time.monotonic() - t0})


@pytest.mark.parametrize("whose", ["sentinel", "master"])
def test_sentinel_wrong_password(cluster_factory, sentinelled, whose):
    """A wrong password for the sentinels or for the master: the node exits and says which login failed."""
    if whose == "sentinel":
        settings = {**sentinelled.settings(), "REDIS_SENTINEL_OPTIONS": {"password": pw.WRONG}}
        url, expect = sentinelled.url(), ("AuthenticationError", "invalid username-password pair")
    else:
        settings, url, expect = sentinelled.settings(), sentinelled.url(pw.WRONG), ("WRONGPASS",)
    cluster = cluster_factory(redis_url=url, settings=settings)
    node = cluster.start_node("wrong", wait=False)
    servers.wait_until(lambda: not node.alive(), UP_TIMEOUT, f"the node with a wrong {whose} password to exit")
    out = node.output()
    assert any(word in out for word in expect), out[-3000:]
    for secret in (pw.WRONG, pw.SENTINEL_MASTER, pw.SENTINEL):
        no_password_in(out, secret)


def test_a_silent_sentinel_is_a_bounded_wait(cluster_factory, sentinelled):
    """A sentinel that accepts connections and never answers (a blackholed proxy): the node gives up in time.

    With ``REDIS_SENTINEL_OPTIONS`` set, redis-py uses those keywords alone for the
    sentinels, so the transport must put its own socket timeouts in (DESIGN I7).
    """
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        settings = {**sentinelled.settings(), "REDIS_SENTINELS": [f"127.0.0.1:{silent.getsockname()[1]}"]}
        cluster = cluster_factory(redis_url=sentinelled.url(), settings=settings)
        node = cluster.start_node("silent", wait=False)
        servers.wait_until(lambda: not node.alive(), UP_TIMEOUT, "the node with a silent sentinel to exit")
    out = node.output()
    assert "Timeout" in out, out[-3000:]
