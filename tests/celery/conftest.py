"""Fixture: ``celery_worker(cluster, pool, ...)`` starts a worker on the cluster's env; teardown stops it."""
import pytest

from tests.celery.worker import CeleryWorker


@pytest.fixture
def celery_worker(cluster_factory, tmp_path):
    # Depends on cluster_factory so workers stop before the nodes and the test database go away.
    made: list[CeleryWorker] = []

    def make(cluster, pool: str, **kwargs) -> CeleryWorker:
        worker = CeleryWorker(cluster, pool, tmp_path, **kwargs)
        made.append(worker)
        return worker.start()

    yield make
    for worker in made:
        worker.close()
