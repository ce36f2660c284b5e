"""A Redis with ``requirepass`` and one with only an ACL user: the hub runs on both, and a wrong password says so.

Issue 9: "with ``REDIS_URL=redis://:pw@...`` (requirepass) or ``redis://user:pw@...``
(an ACL user), a node cannot even subscribe ("timed out") ... and the error message
prints the password."
"""
from __future__ import annotations

import pytest

from processhub.exceptions import TransportUnavailable
from tests.conftest import needs_services
from tests.redis_auth import passwords as pw
from tests.redis_auth import servers
from tests.redis_auth.conftest import HUB_GRANT, HUB_USER
from tests.redis_auth.scenario import UP_TIMEOUT, client_error, exercise, no_password_in

pytestmark = [needs_services, pytest.mark.cluster, pytest.mark.timeout(120)]


def url(server: servers.RedisServer, password: str, user: str = "") -> str:
    return f"redis://{user}:{pw.q(password)}@127.0.0.1:{server.port}/0"


def test_requirepass(cluster_factory, requirepass_redis):
    cluster = cluster_factory(redis_url=url(requirepass_redis, pw.REQUIREPASS))
    print(exercise(cluster, "rp1"))
    no_password_in(cluster.logs(), pw.REQUIREPASS)


def test_requirepass_wrong_password(cluster_factory, requirepass_redis):
    cluster = cluster_factory(redis_url=url(requirepass_redis, pw.WRONG))
    node = cluster.start_node("wrong", wait=False)
    servers.wait_until(lambda: not node.alive(), UP_TIMEOUT, "the node with a wrong password to exit")
    out = node.output()
    assert "WRONGPASS" in out, out[-3000:]
    no_password_in(out, pw.WRONG)
    exc, _ = client_error(cluster.client_settings())
    assert isinstance(exc, TransportUnavailable) and "WRONGPASS" in str(exc), repr(exc)
    no_password_in(repr(exc), pw.WRONG)


def test_a_refused_client_leaves_no_runtime_behind(cluster_factory, requirepass_redis):
    cluster = cluster_factory(redis_url=url(requirepass_redis, pw.WRONG))
    _, leaked = client_error(cluster.client_settings())
    assert leaked == []


def acl_cluster(cluster_factory, redis_dir, stopping, password=pw.ACL, grant=HUB_GRANT):
    """A cluster on a fresh Redis whose only user is ``hub`` with ``grant`` (``{prefix}``: the cluster's prefix)."""
    server = servers.acl_server(redis_dir, HUB_USER, pw.ACL, "GRANT", pw.ADMIN, name=f"acl{len(stopping)}",
                                start=False)
    stopping.append(server)
    cluster = cluster_factory(redis_url=url(server, password, HUB_USER))
    server.config = [line.replace("GRANT", grant.format(prefix=cluster.prefix)) for line in server.config]
    server.start()
    return server, cluster


def acl_denials(server: servers.RedisServer) -> list[dict]:
    return [{k: e.get(k) for k in ("reason", "object", "username", "context")}
            for e in server.client().acl_log()]


def test_acl_user_with_the_documented_grant(cluster_factory, redis_dir, stopping):
    server, cluster = acl_cluster(cluster_factory, redis_dir, stopping)
    print(exercise(cluster, "acl1"))
    cluster.stop_all()  # a drain unsubscribes: that must be granted too
    assert acl_denials(server) == []
    no_password_in(cluster.logs(), pw.ACL)


def test_acl_wrong_password(cluster_factory, redis_dir, stopping):
    server, cluster = acl_cluster(cluster_factory, redis_dir, stopping, password=pw.WRONG)
    node = cluster.start_node("wrong", wait=False)
    servers.wait_until(lambda: not node.alive(), UP_TIMEOUT, "the node with a wrong password to exit")
    out = node.output()
    assert "WRONGPASS" in out, out[-3000:]
    no_password_in(out, pw.WRONG)
    no_password_in(out, pw.ACL)


def test_acl_user_without_the_hub_channels_names_noperm(cluster_factory, redis_dir, stopping):
    """A grant that misses the hub's channels: the node says NOPERM, not just "timed out"."""
    server, cluster = acl_cluster(cluster_factory, redis_dir, stopping,
                                  grant="resetchannels &other.* +publish +subscribe +unsubscribe +ping")
    node = cluster.start_node("denied", wait=False)
    servers.wait_until(lambda: not node.alive(), UP_TIMEOUT, "the node without channel rights to exit")
    out = node.output()
    assert "NOPERM" in out, out[-3000:]
    assert {d["reason"] for d in acl_denials(server)} == {"channel"}
    no_password_in(out, pw.ACL)
