"""System checks for processhub settings (ids processhub.E001...)."""
from django.core.checks import Error, Tags, register
from django.core.exceptions import ImproperlyConfigured


@register(Tags.compatibility)
def check_settings(app_configs, **kwargs):
    from django.db import connection

    from .conf import hub_settings

    try:
        hs = hub_settings()
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="processhub.E001")]
    errors = []
    if hs.transport == "redis" and connection.vendor == "sqlite":
        errors.append(
            Error(
                "processhub with several nodes (REDIS_URL set) needs a shared database; SQLite is refused.",
                hint="Set DATABASE_URL to a PostgreSQL database, or unset REDIS_URL for the embedded single node.",
                id="processhub.E002",
            )
        )
    if hs.transport == "redis" and not hs.REDIS_URL:
        errors.append(Error("PROCESSHUB TRANSPORT is 'redis' but REDIS_URL is not set.", id="processhub.E003"))
    return errors
