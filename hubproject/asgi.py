"""ASGI entry point of the demo project: Django for HTTP, the demo's consumers for WebSockets.

``runserver`` (daphne's) serves it; so does ``daphne hubproject.asgi:application``.
WebSockets are accepted only from pages of ``ALLOWED_HOSTS`` (a page elsewhere
cannot open a socket with a visitor's session cookie), and carry the session's user.
"""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubproject.settings")
http_application = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (these need the app registry)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from hubproject.routing import websocket_urlpatterns  # noqa: E402
from processhub.embedded import start_if_embedded  # noqa: E402

if settings.DEBUG:
    # As runserver does, so that `daphne hubproject.asgi:application` serves the demo's JavaScript too.
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    http_application = ASGIStaticFilesHandler(http_application)

application = ProtocolTypeRouter({
    "http": http_application,
    "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
})

start_if_embedded()
