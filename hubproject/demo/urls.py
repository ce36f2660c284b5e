"""URLs of the demo pages."""
from django.urls import path

from . import views

app_name = "demo"
urlpatterns = [
    path("", views.index, name="index"),
    path("counter/<str:name>/", views.counter, name="counter"),
    path("room/<str:name>/", views.room, name="room"),
]
