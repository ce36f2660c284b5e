"""Django error reports (the debug page, the admins' error e-mails) with passwords in URLs masked.

Django's ``SafeExceptionReporterFilter`` hides settings named like ``*PASSWORD*``
or ``*SECRET*``, but not ``DATABASE_URL``, ``REDIS_URL``, ``CELERY_BROKER_URL``
or ``PROCESSHUB["REDIS_URL"]``, nor an exception's text or a quoted source
line. Use both classes::

    DEFAULT_EXCEPTION_REPORTER = "processhub.reporting.MaskingExceptionReporter"
    DEFAULT_EXCEPTION_REPORTER_FILTER = "processhub.reporting.MaskingExceptionReporterFilter"
"""
from __future__ import annotations

import re
from pprint import pformat
from typing import Any

from django.views.debug import ExceptionReporter, SafeExceptionReporterFilter

from .masking import mask_text

_SECRET_VARIABLE = re.compile(r"pass|pwd|secret|token|credential", re.IGNORECASE)


class _Shown(str):
    """Text the report prints as it is (the report calls ``pprint`` on each frame variable)."""

    def __repr__(self) -> str:
        return str(self)


class MaskingExceptionReporterFilter(SafeExceptionReporterFilter):
    """Django's filter, plus ``mask_text`` over every setting string and every frame variable.

    A frame variable named like a secret (``password``, ``token``, ``secret``,
    ...) is hidden whole, as Django hides such settings (but not every ``key``:
    process keys are worth seeing on a debug page).
    """

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        value = super().cleanse_setting(key, value)
        return mask_text(value) if isinstance(value, str) else value

    def get_traceback_frame_variables(self, request: Any, tb_frame: Any) -> list[tuple[str, Any]]:
        return [(name, self.cleansed_substitute if _SECRET_VARIABLE.search(name)
                 else _Shown(mask_text(pformat(value))))
                for name, value in super().get_traceback_frame_variables(request, tb_frame)]


class MaskingExceptionReporter(ExceptionReporter):
    """Django's reporter with the exception's text and the quoted source lines masked too."""

    def get_traceback_frames(self) -> list[dict[str, Any]]:
        frames = super().get_traceback_frames()
        for frame in frames:
            if frame.get("context_line"):
                frame["context_line"] = mask_text(frame["context_line"])
            for key in ("pre_context", "post_context"):
                frame[key] = [mask_text(line) for line in frame.get(key) or []]
        return frames

    def get_traceback_data(self) -> dict[str, Any]:
        data = super().get_traceback_data()
        if data.get("exception_value"):
            data["exception_value"] = mask_text(str(data["exception_value"]))
        return data
