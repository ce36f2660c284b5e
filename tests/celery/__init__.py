"""Celery integration tests: real ``celery worker`` subprocesses against the test cluster."""
