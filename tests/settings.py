"""Settings of the test-suite: the demo project plus the test app ``tests.hubtest``."""
import os

from hubproject.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.hubtest"]  # noqa: F405

# One test database per pytest run, so concurrent runs on one server do not collide.
DATABASES["default"]["TEST"] = {"NAME": os.environ.get("PROCESSHUB_TEST_DB", f"test_processhub_{os.getpid()}")}  # noqa: F405
