"""Celery tasks of processhub, found by ``app.autodiscover_tasks()``: registry health report and purge.

Defined in :mod:`processhub.contrib.celery`; importing them here registers them
with every worker of a project that autodiscovers tasks, so a beat schedule
(``schedule_maintenance`` or ``CELERY_BEAT_SCHEDULE``) can name them.
"""
from .contrib.celery import purge_finished_task, registry_health_task

__all__ = ["purge_finished_task", "registry_health_task"]
