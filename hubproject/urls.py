"""URLs of the demo project: the admin and the demo pages."""
from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("hubproject.demo.urls")),
]
