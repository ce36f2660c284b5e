"""What the transport reads from a Redis URL and its options: the login, TLS, Sentinel (no server needed)."""
from __future__ import annotations

import ssl

import pytest

from processhub.transport.redis import Endpoint
from processhub.transport.resp import pack


@pytest.mark.parametrize("url, options, handshake", [
    ("redis://127.0.0.1:6379/0", None, []),
    ("redis://:pw-1@127.0.0.1/0", None, [pack(b"AUTH", b"pw-1")]),
    ("redis://hub:pw-2@127.0.0.1/0", None, [pack(b"AUTH", b"hub", b"pw-2")]),
    # percent-encoded in the URL, sent decoded
    ("redis://hub:p%40ss%2Fw%3Ard@127.0.0.1/0", None, [pack(b"AUTH", b"hub", b"p@ss/w:rd")]),
    # REDIS_OPTIONS win over the URL
    ("redis://127.0.0.1/0", {"username": "hub", "password": "pw-3"}, [pack(b"AUTH", b"hub", b"pw-3")]),
])
def test_login_from_url_and_options(url, options, handshake):
    assert Endpoint(url, options).handshake() == handshake


def test_descriptions_never_carry_the_password():
    ep = Endpoint("rediss://hub:Sup3r-Secret@redis.example:6380/0?ssl_ca_certs=/ca.crt")
    assert "Sup3r-Secret" not in ep.describe() + repr(ep)
    assert ep.describe().startswith("rediss://hub:***@redis.example:6380")
    sentinel = Endpoint("redis://:Sup3r-Secret@mymaster/0", None, ["10.0.0.1:26379", "[::1]:26380"], "mymaster",
                        {"password": "Sentinel-Secret"})
    assert sentinel.sentinels == [("10.0.0.1", 26379), ("::1", 26380)]
    assert "Secret" not in sentinel.describe() + repr(sentinel)


def test_tls_from_the_query_string(tmp_path):
    from tests.redis_auth.servers import make_tls_files

    tls = make_tls_files(tmp_path)
    ep = Endpoint(f"rediss://127.0.0.1:6380/0?ssl_ca_certs={tls['ca.crt']}&ssl_certfile={tls['client.crt']}"
                  f"&ssl_keyfile={tls['client.key']}")
    ctx = ep.ssl_context()
    assert ep.tls and ctx is not None
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.get_ca_certs()[0]["subject"] == ((("commonName", "processhub test CA"),),)
    relaxed = Endpoint(f"rediss://127.0.0.1:6380/0?ssl_ca_certs={tls['ca.crt']}&ssl_check_hostname=false")
    assert relaxed.ssl_context().verify_mode == ssl.CERT_REQUIRED and not relaxed.ssl_context().check_hostname
    none = Endpoint("rediss://127.0.0.1:6380/0?ssl_cert_reqs=none")
    assert none.ssl_context().verify_mode == ssl.CERT_NONE and not none.ssl_context().check_hostname
    assert Endpoint("redis://127.0.0.1/0", {"ssl": True}).tls
    assert Endpoint("redis://127.0.0.1/0").ssl_context() is None
