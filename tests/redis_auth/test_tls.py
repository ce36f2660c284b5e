"""TLS with a private CA and client certificates from a ``rediss://`` URL, plus a password (as managed services)."""
from __future__ import annotations

from urllib.parse import quote, urlencode

import pytest

from tests.conftest import needs_services
from tests.redis_auth import passwords as pw
from tests.redis_auth import servers
from tests.redis_auth.scenario import UP_TIMEOUT, exercise, no_password_in

pytestmark = [needs_services, pytest.mark.cluster, pytest.mark.timeout(120)]


def tls_url(server: servers.RedisServer, tls: dict, password: str = pw.TLS, **query: str) -> str:
    params = {"ssl_ca_certs": tls["ca.crt"], "ssl_certfile": tls["client.crt"], "ssl_keyfile": tls["client.key"],
              **query}
    return f"rediss://:{pw.q(password)}@127.0.0.1:{server.port}/0?{urlencode(params, quote_via=quote)}"


def test_tls_with_client_certificate_from_the_url(cluster_factory, tls_redis, tls_files):
    cluster = cluster_factory(redis_url=tls_url(tls_redis, tls_files))
    print(exercise(cluster, "tls1"))
    no_password_in(cluster.logs(), pw.TLS)


def test_tls_options_from_settings(cluster_factory, tls_redis, tls_files):
    """The same through ``REDIS_OPTIONS`` (redis-py's keywords), the URL naming only the server."""
    options = {"ssl_ca_certs": str(tls_files["ca.crt"]), "ssl_certfile": str(tls_files["client.crt"]),
               "ssl_keyfile": str(tls_files["client.key"]), "password": pw.TLS}
    cluster = cluster_factory(redis_url=f"rediss://127.0.0.1:{tls_redis.port}/0",
                              settings={"REDIS_OPTIONS": options})
    cluster.start_node("a", wait=False)
    cluster.wait_up("a", timeout=UP_TIMEOUT)
    from tests.hubtest.processes import Echo

    assert Echo.call("tlsopt", {})["node"] == "a"


@pytest.mark.parametrize("case", ["no client certificate", "unknown CA", "wrong password"])
def test_tls_refusals_name_the_cause(cluster_factory, tls_redis, tls_files, tmp_path, case):
    if case == "no client certificate":
        url = f"rediss://:{pw.q(pw.TLS)}@127.0.0.1:{tls_redis.port}/0?ssl_ca_certs={quote(str(tls_files['ca.crt']))}"
        expect = ("CERTIFICATE_REQUIRED", "certificate required", "HANDSHAKE_FAILURE")
    elif case == "unknown CA":
        other = servers.make_tls_files(tmp_path / "other")
        url = tls_url(tls_redis, {**tls_files, "ca.crt": other["ca.crt"]})
        expect = ("CERTIFICATE_VERIFY_FAILED", "SSLCertVerificationError")
    else:
        url = tls_url(tls_redis, tls_files, password=pw.WRONG)
        expect = ("WRONGPASS",)
    cluster = cluster_factory(redis_url=url)
    node = cluster.start_node("refused", wait=False)
    servers.wait_until(lambda: not node.alive(), UP_TIMEOUT, f"the node ({case}) to exit")
    out = node.output()
    print(out[-800:])
    assert any(word in out for word in expect), out[-3000:]
    no_password_in(out, pw.TLS)
    no_password_in(out, pw.WRONG)
