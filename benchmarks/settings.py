"""Settings of the benchmark cluster: the demo project plus this package (for its ``processes.py``).

Everything else comes from the environment the benchmark sets (DATABASE_URL,
REDIS_URL, PROCESSHUB_*), exactly as for a production ``runhub``.
"""
from hubproject.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "benchmarks"]  # noqa: F405
