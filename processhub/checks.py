"""System checks for processhub settings (ids processhub.E001...)."""
from django.core.checks import Error, Tags, register
from django.core.checks.security.base import (
    SECRET_KEY_INSECURE_PREFIX,
    SECRET_KEY_MIN_LENGTH,
    SECRET_KEY_MIN_UNIQUE_CHARACTERS,
)
from django.core.exceptions import ImproperlyConfigured

from .masking import mask_text

# The demo project's fallback when DJANGO_SECRET_KEY is not set (hubproject/settings.py).
DEMO_SECRET_KEY = "insecure-demo-key-change-me"


def insecure_secret_key(key: str) -> bool:
    """True for the demo's default, a ``django-insecure-`` key, or one Django's security.W009 would call weak."""
    return (
        key == DEMO_SECRET_KEY
        or key.startswith(SECRET_KEY_INSECURE_PREFIX)
        or len(key) < SECRET_KEY_MIN_LENGTH
        or len(set(key)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS
    )


@register(Tags.compatibility)
def check_settings(app_configs, **kwargs):
    from django.conf import settings
    from django.db import connection

    from .conf import hub_settings

    try:
        hs = hub_settings()
    except ImproperlyConfigured as exc:
        return [Error(mask_text(str(exc)), id="processhub.E001")]
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
    if hs.transport != "memory":
        try:
            key = settings.SECRET_KEY
        except ImproperlyConfigured:  # empty: Django refuses it on access
            key = ""
        if insecure_secret_key(key):
            # Nodes, web servers and workers of one cluster trust each other through this key (signed
            # messages, sessions of the admin that moves processes): a guessable key opens all of them.
            errors.append(
                Error(
                    "SECRET_KEY is a default or insecure key, and the hub is shared between processes over "
                    f"the {hs.transport!r} transport.",
                    hint=(
                        "Set DJANGO_SECRET_KEY (or SECRET_KEY) to the same long random value on every node, web "
                        "server and worker of the cluster, e.g. the output of: python -c \"from "
                        "django.core.management.utils import get_random_secret_key as k; print(k())\". At least "
                        f"{SECRET_KEY_MIN_LENGTH} characters, not starting with '{SECRET_KEY_INSECURE_PREFIX}'."
                    ),
                    id="processhub.E004",
                )
            )
    return errors
