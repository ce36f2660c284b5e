"""Safe defaults (issue 9): processhub.E004 on a weak SECRET_KEY with REDIS_URL, DEBUG, Django's deploy checks."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import override_settings

from processhub.checks import DEMO_SECRET_KEY, check_settings

ROOT = Path(__file__).resolve().parents[2]
GOOD_KEY = "k9#Qz2vL!x7Rm4Tp0Wd8Ys1Hb6Nc3Fg5Jq-aE_uO*iU&yT^rV%"
PASSWORD = "hunter2-in-the-url"
CLUSTER_ENV = {
    "DATABASE_URL": f"postgres://app:{PASSWORD}@db.example.com:5432/app",
    "REDIS_URL": f"redis://:{PASSWORD}@redis.example.com:6379/0",
    "DJANGO_SECRET_KEY": GOOD_KEY,
    "DJANGO_ALLOWED_HOSTS": "hub.example.com",
}


def ids(errors) -> set[str]:
    return {e.id for e in errors}


@pytest.mark.parametrize(
    "key",
    [
        DEMO_SECRET_KEY,
        "django-insecure-" + GOOD_KEY,  # what startproject writes
        GOOD_KEY[:49],  # too short
        "ab" * 40,  # too few distinct characters
        "",
    ],
)
def test_e004_refuses_a_weak_key_when_the_hub_is_shared(key):
    with override_settings(SECRET_KEY=key, PROCESSHUB={"REDIS_URL": f"redis://:{PASSWORD}@h:6379/0"}):
        errors = check_settings(None)
    [e004] = [e for e in errors if e.id == "processhub.E004"]
    assert "DJANGO_SECRET_KEY" in e004.hint and "get_random_secret_key" in e004.hint
    assert PASSWORD not in e004.msg + e004.hint


def test_e004_is_quiet_for_a_good_key_or_the_embedded_hub():
    with override_settings(SECRET_KEY=GOOD_KEY, PROCESSHUB={"REDIS_URL": "redis://h:6379/0"}):
        assert "processhub.E004" not in ids(check_settings(None))
    with override_settings(SECRET_KEY=DEMO_SECRET_KEY, PROCESSHUB={"TRANSPORT": "memory"}):
        assert "processhub.E004" not in ids(check_settings(None))


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("PROCESSHUB_", "DJANGO_", "CELERY_")) and k not in ("DATABASE_URL", "REDIS_URL")}
    clean["DJANGO_SETTINGS_MODULE"] = "hubproject.settings"
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


def test_deploy_checks_pass_for_the_readme_cluster_settings():
    # Nothing is contacted: the check looks at settings only.
    out = manage("check", "--deploy", "--fail-level", "WARNING", env=CLUSTER_ENV)
    assert out.returncode == 0, out.stdout + out.stderr
    assert PASSWORD not in out.stdout + out.stderr


def test_cluster_without_a_secret_key_is_refused_at_start_up():
    env = {k: v for k, v in CLUSTER_ENV.items() if k != "DJANGO_SECRET_KEY"}
    out = manage("check", env=env)
    assert out.returncode != 0 and "processhub.E004" in out.stderr, out.stdout + out.stderr
    assert PASSWORD not in out.stdout + out.stderr


@pytest.mark.parametrize(
    "env, debug, https",
    [
        ({}, True, False),  # the embedded demo
        ({"DJANGO_DEBUG": "0"}, False, False),
        (CLUSTER_ENV, False, True),
        ({**CLUSTER_ENV, "DJANGO_DEBUG": "1"}, True, False),  # asked for: a local cluster over plain HTTP
        ({**CLUSTER_ENV, "DJANGO_HTTPS": "0"}, False, False),
        ({"DATABASE_URL": CLUSTER_ENV["DATABASE_URL"]}, False, True),  # a database of its own is a deployment
    ],
)
def test_debug_and_https_defaults(env, debug, https):
    code = ("from django.conf import settings as s; print(s.DEBUG, s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, "
            "s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS > 0)")
    out = manage("shell", "-c", code, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].split() == [str(debug), *[str(https)] * 4]
