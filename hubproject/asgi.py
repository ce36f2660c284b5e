"""ASGI entry point of the demo project (runserver uses it through daphne)."""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubproject.settings")
application = get_asgi_application()

from processhub.embedded import start_if_embedded  # noqa: E402  (needs the app registry)

start_if_embedded()
