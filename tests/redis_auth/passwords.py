"""The passwords the Redis authentication tests use: fresh per test run, made when first imported.

The leak check (``leakcheck.py``) imports them at start-up, so every line the run
logs can be searched for them. One contains ``:``, ``@`` and ``/``, which a URL
must carry percent-encoded: the check looks for both spellings.
"""
from __future__ import annotations

import secrets
from urllib.parse import quote


def _make(tag: str) -> str:
    return f"ph-{tag}-{secrets.token_hex(8)}"


REQUIREPASS = _make("requirepass")
ACL = f"ph-acl:p@ss/{secrets.token_hex(8)}"   # needs percent-encoding in a URL
ADMIN = _make("admin")                         # the tests' own ACL admin user, never the hub's
TLS = _make("tls")
SENTINEL_MASTER = _make("sentinel-master")
SENTINEL = _make("sentinel")                   # the sentinels' own requirepass
WRONG = _make("wrong")                         # what the wrong-password tests send

ALL = (REQUIREPASS, ACL, ADMIN, TLS, SENTINEL_MASTER, SENTINEL, WRONG)


def q(password: str) -> str:
    """``password`` as it goes into the userinfo of a URL."""
    return quote(password, safe="")
