"""URLs of the demo project: the admin, metrics (staff only here) and the demo pages."""
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.urls import include, path

from processhub.metrics import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    # In production, route metrics where only Prometheus can reach them; the demo keeps them staff-only.
    path("metrics/", staff_member_required(metrics_view), name="metrics"),
    path("", include("hubproject.demo.urls")),
]
