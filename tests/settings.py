"""Settings of the test-suite: the demo project plus the test app ``tests.hubtest``."""
from hubproject.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.hubtest"]  # noqa: F405
