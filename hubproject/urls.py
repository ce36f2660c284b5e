"""URLs of the demo project: the admin, metrics and the demo pages."""
from django.contrib import admin
from django.urls import include, path

from processhub.metrics import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    # Answers users with processhub.view_metrics and requests bearing PROCESSHUB METRICS_TOKEN; 401/403 otherwise.
    path("metrics/", metrics_view, name="metrics"),
    path("", include("hubproject.demo.urls")),
]
