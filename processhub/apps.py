"""App configuration: discovers ``processes.py`` modules and wires checks."""
from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class ProcessHubConfig(AppConfig):
    name = "processhub"
    verbose_name = "Process hub"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers system checks)
        from .embedded import start_node
        from .process import register_pending
        from .runtime import set_embedded_starter

        register_pending()
        autodiscover_modules("processes")
        register_pending()
        set_embedded_starter(start_node)
