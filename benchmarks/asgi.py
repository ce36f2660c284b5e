"""The fan-out benchmark's web servers: one WebSocket route to the ``Fanout`` process (``python -m benchmarks.fanout``).

Served by ``daphne benchmarks.asgi:application`` with ``benchmarks.settings``; a
socket joins the process's Channels group and receives its pushes, as a demo tab does.
"""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
http_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402  (these need the app registry)
from django.urls import path  # noqa: E402

from processhub.consumers import ProcessConsumer  # noqa: E402

from .processes import Fanout  # noqa: E402


class FanoutConsumer(ProcessConsumer):
    process_class = Fanout


application = ProtocolTypeRouter({
    "http": http_application,
    "websocket": URLRouter([path("ws/fanout/<str:name>/", FanoutConsumer.as_asgi())]),
})
