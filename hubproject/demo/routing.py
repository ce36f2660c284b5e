"""WebSocket routes of the demo pages."""
from django.urls import path

from .consumers import CounterConsumer, RoomConsumer

websocket_urlpatterns = [
    path("ws/counter/<str:name>/", CounterConsumer.as_asgi()),
    path("ws/room/<str:name>/", RoomConsumer.as_asgi()),
]
