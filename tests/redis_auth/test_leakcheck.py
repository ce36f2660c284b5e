"""The leak check catches a password in a log record, a node's output file or a test report, and masks it."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.redis_auth import leakcheck
from tests.redis_auth.leakcheck import checkable, scan_lines, session_secrets, url_secrets

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("url, secrets", [
    ("redis://:s3cret-pw@h:6379/0", ["s3cret-pw"]),
    ("redis://hub:p%40ss%2Fw0rd%3A@h/0", ["p@ss/w0rd:"]),
    ("rediss://h:6380/0?ssl_ca_certs=/ca.crt&password=q-pass-99", ["q-pass-99"]),
    ("postgres://postgres@127.0.0.1:5432/processhub", []),
    ("redis://127.0.0.1:6379/0", []),
    ("not a url", []),
])
def test_url_secrets(url, secrets):
    assert url_secrets(url) == secrets


def test_too_short_or_common_passwords_are_not_searched():
    assert not checkable("pw", "redis://:pw@h/0")
    assert not checkable("postgres", "postgres://postgres:postgres@db/app")
    assert checkable("Zq8-long-enough", "postgres://u:Zq8-long-enough@db/app")
    secrets, skipped = session_secrets({"DATABASE_URL": "postgres://postgres:postgres@db/app"})
    assert "postgres" not in secrets and any("DATABASE_URL" in s for s in skipped)


def test_scan_finds_each_spelling_and_masks_it():
    secrets = {"p@ss/w0rd:x1": "ACL"}
    lines = ["connected to redis://hub:***@h/0",
             "AUTH hub p@ss/w0rd:x1",
             "url redis://hub:p%40ss%2Fw0rd%3Ax1@h/0",
             "path-quoted p%40ss/w0rd%3Ax1"]
    leaks = list(scan_lines(lines, secrets, "here"))
    assert [leak.line for leak in leaks] == ["AUTH hub <PASSWORD:ACL>", "url redis://hub:<PASSWORD:ACL>@h/0",
                                             "path-quoted <PASSWORD:ACL>"]
    assert all("w0rd" not in leak.line for leak in leaks)


def _run(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    """A pytest session of its own, with only this plugin (registered as tests/conftest.py would), on ``body``."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.redis_auth.leakcheck"]\n')
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:django", "-p", "no:cacheprovider", "-q",
         "--basetemp", str(tmp_path / "base"), "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path),
         str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(120)
def test_a_session_with_leaks_fails_and_shows_them_masked(tmp_path):
    done = _run(tmp_path, """
        import logging
        from tests.redis_auth import passwords
        from tests.redis_auth.leakcheck import register_secret

        register_secret("Custom-Secret-123", "custom")
        # Like processhub's logger under hubproject's LOGGING: configured before the tests, not propagating.
        logging.getLogger("processhub.transport.redis").propagate = False

        def test_logs_a_password():
            logging.getLogger("some.library").debug("connecting with %s", passwords.TLS)

        def test_a_node_log_file(tmp_path):
            (tmp_path / "cluster0").mkdir()
            (tmp_path / "cluster0" / "a-1.log").write_text("boom: redis://:" + passwords.q(passwords.ACL) + "@h/0\\n")

        def test_a_report(capsys):
            print("the custom one: Custom-Secret-123")

        def test_a_processhub_record():
            logging.getLogger("processhub.transport.redis").debug("refused %s", passwords.SENTINEL)
    """)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "4 passed" in out, out
    assert "line(s) carry a password" in out, out
    for name in ("TLS", "ACL", "SENTINEL"):
        assert f"<PASSWORD:tests.redis_auth.passwords.{name}>" in out, out
    assert "<PASSWORD:custom>" in out and "Custom-Secret-123" not in out, out
    assert not re.search(r"ph-(tls|sentinel)-[0-9a-f]{16}|p@ss/|p%40ss", out), out
    leaks = [line for line in out.splitlines() if "<PASSWORD:" in line]
    # The live log file holds both DEBUG records (the processhub one only because the check hooked that logger).
    assert any("processhub-leakcheck-" in line and "passwords.TLS" in line for line in leaks), out
    assert any("processhub-leakcheck-" in line and "passwords.SENTINEL" in line for line in leaks), out
    assert any(line.startswith(str(tmp_path / "base")) and "a-1.log" in line for line in leaks), out
    assert any("test_a_report: Captured stdout call" in line for line in leaks), out
    assert len(leaks) == len(set(leaks)), out


@pytest.mark.timeout(120)
def test_a_clean_session_passes(tmp_path):
    done = _run(tmp_path, """
        import logging
        from processhub.masking import mask_url
        from tests.redis_auth import passwords

        def test_masked_is_fine(tmp_path):
            url = "redis://hub:" + passwords.q(passwords.ACL) + "@h/0"
            logging.getLogger("x").warning("connected to %s", mask_url(url))
            (tmp_path / "n-1.log").write_text(mask_url(url) + "\\n")
    """)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "password leak check: no password" in out, out


def test_registered_secrets_are_kept():
    leakcheck.register_secret("Another-Secret-456", "another")
    secrets, _ = session_secrets({})
    assert secrets["Another-Secret-456"] == "another"
    leakcheck._registered.pop("Another-Secret-456")
