"""WSGI entry point of the demo project."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubproject.settings")
application = get_wsgi_application()

from processhub.embedded import start_if_embedded  # noqa: E402  (needs the app registry)

start_if_embedded()
