from django.apps import AppConfig


class EdgeOnlyConfig(AppConfig):
    """Installed on some nodes only (PROCESSHUB_EXTRA_APPS): placement must never send its processes elsewhere."""

    name = "tests.edgeonly"
    label = "edgeonly"
    default_auto_field = "django.db.models.BigAutoField"
