"""Settings of the test-suite: the demo project plus the test apps ``tests.hubtest``, ``edgeapp``, ``edgeonly``."""
import os

from hubproject.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.hubtest", "tests.edgeapp", "tests.edgeonly"]  # noqa: F405
# A node started with HUBTEST_WITHOUT_APPS=tests.edgeonly lacks that app's classes (placement must notice).
INSTALLED_APPS = [a for a in INSTALLED_APPS if a not in os.environ.get("HUBTEST_WITHOUT_APPS", "").split(",")]

# One test database per pytest run, so concurrent runs on one server do not collide.
DATABASES["default"]["TEST"] = {"NAME": os.environ.get("PROCESSHUB_TEST_DB", f"test_processhub_{os.getpid()}")}  # noqa: F405

# scripts/test sets DATABASE_URL and REDIS_URL, the cluster shape, whose defaults are production ones. The
# suite talks plain HTTP (test client, live_server), and its runhub nodes run the system checks, where
# processhub.E004 refuses the demo's fallback key: a fixed test key, the same in every test process.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "tests-only-4Jq9vXb2Lm7Rz1Kc8Wn3Hd6Tf0Ys5Pg-not-for-production"
SECURE_SSL_REDIRECT = False
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = False
SECURE_HSTS_SECONDS = 0
