"""The demo Django project that hosts processhub."""

# Load the Celery app whenever Django starts, so @shared_task binds to it
# (the layout Celery documents for Django projects).
from .celery import app as celery_app

__all__ = ("celery_app",)
