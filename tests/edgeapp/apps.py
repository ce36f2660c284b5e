from django.apps import AppConfig


class EdgeAppConfig(AppConfig):
    name = "tests.edgeapp"
    label = "edgeapp"
    default_auto_field = "django.db.models.BigAutoField"
