"""URLs of the demo pages (their WebSockets are in routing.py)."""
from django.urls import path

from . import views

app_name = "demo"
urlpatterns = [
    path("", views.index, name="index"),
    path("counter/<str:name>/", views.counter, name="counter"),
    path("room/<str:name>/", views.room, name="room"),
    path("live/", views.live, name="live"),
    path("live/state.json", views.live_state, name="live_state"),
    path("live/nodes/<str:pk>/kill/", views.kill_node, name="kill_node"),
]
