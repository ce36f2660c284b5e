"""The embedded default: one node inside the web server process (no REDIS_URL)."""
import logging

from .conf import hub_settings

logger = logging.getLogger(__name__)


def start_if_embedded() -> None:
    """Start this process's runtime (and with it the embedded node) now rather than on first use."""
    if not hub_settings().embedded:
        return
    from django.db import DatabaseError

    from .runtime import get_runtime

    try:
        get_runtime()
    except DatabaseError as exc:
        # Typically: migrations not applied yet. The node starts on first use instead.
        logger.warning("processhub: embedded node not started yet: %s", exc)
