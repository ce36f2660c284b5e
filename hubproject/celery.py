"""The project's one Celery app: the hub's Redis as broker, configured from Django's ``CELERY_*`` settings.

Started the standard way (``celery -A hubproject worker``). Tasks are found in
every installed app's ``tasks.py``. ``install`` adds ``--hub-node NAME`` to
``celery worker`` so a worker can also host processes; ``schedule_maintenance``
gives ``celery beat`` the registry health report and the retention purge.
"""
import os

from celery import Celery

from processhub.contrib.celery import install, schedule_maintenance

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubproject.settings")

app = Celery("hubproject")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
install(app)
schedule_maintenance(app)
