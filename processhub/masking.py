"""Hide credentials in URLs and free text before they reach logs, pages, ``hubstatus`` or metrics.

A password is found where the URL parsers that consume it find it: the userinfo
of ``scheme://user:password@host`` up to the last ``@`` of the authority (as
``urllib.parse`` and redis-py read it, so a raw ``@`` in a password is covered),
and query parameters such as ``?password=`` or ``&sentinel_password=``. Passwords
must be percent-encoded in URLs anyway (a raw ``/``, ``?`` or ``#`` breaks every
parser), so these rules mask what the clients would send. Free text also gets
``password=...`` pairs and ``'PASSWORD': '...'`` dict items masked (DSNs and
settings dumps in tracebacks).
"""
from __future__ import annotations

import logging
import re

MASK = "***"

# Names of query parameters and key/value pairs whose values are secrets.
_SECRET_NAME = r"[\w.-]*(?:password|passwd|pwd|secret|token)[\w.-]*"
_SECRET_HINTS = ("password", "passwd", "pwd", "secret", "token")  # what every _SECRET_NAME contains

# scheme://authority: the authority ends at whitespace, "/", "?", "#", characters that never occur raw in a URL,
# or where the next URL of a ";"-separated list begins (Celery/kombu Sentinel lists).
_URL_AUTHORITY = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)"
    r"(?P<authority>(?:(?!;[a-zA-Z][a-zA-Z0-9+.\-]*://)[^\s/?#\"<>\\])*)"
)
_QUERY_SECRET = re.compile(rf"(?i)([?&;]{_SECRET_NAME}=)[^&#\s\"'<>]+")
_PAIR_SECRET = re.compile(rf"(?i)(\b{_SECRET_NAME}=)('[^']*'|\"[^\"]*\"|[^\s&#,;)\]}}\"'<>]+)")
_DICT_SECRET = re.compile(rf"(?i)(['\"]{_SECRET_NAME}['\"]\s*:\s*)(?:'[^']*'|\"[^\"]*\"|b'[^']*')")


def _mask_authority(match: re.Match) -> str:
    scheme, authority = match.group("scheme"), match.group("authority")
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return match.group(0)
    user, colon, password = userinfo.partition(":")
    if not colon or not password:
        return match.group(0)  # a user name alone is no secret
    return f"{scheme}{user}:{MASK}@{host}"


def mask_text(text: str) -> str:
    """``text`` with the password of every URL, ``password=`` pair and password dict item replaced by ``***``."""
    if not text:
        return text
    # Most log lines hold no URL with a user and no secret's name: they skip the regular expressions (a node
    # logs a line per process start; the filter runs on every one).
    if "@" in text and "://" in text:
        text = _URL_AUTHORITY.sub(_mask_authority, text)
    lowered = text.casefold()  # as (?i) matches: the long s and the Kelvin sign count too
    if not any(hint in lowered for hint in _SECRET_HINTS):
        return text
    text = _QUERY_SECRET.sub(rf"\g<1>{MASK}", text)
    text = _PAIR_SECRET.sub(rf"\g<1>{MASK}", text)
    return _DICT_SECRET.sub(rf"\g<1>'{MASK}'", text)


def mask_url(url: str | None) -> str:
    """``url`` with its password (userinfo or query parameter) replaced by ``***``; ``""`` for None."""
    return mask_text(url) if url else ""


class MaskSecretsFilter(logging.Filter):
    """A logging filter that masks credentials in a record's message, traceback and stack (add it to handlers).

    ``LOGGING = {"filters": {"mask": {"()": "processhub.masking.MaskSecretsFilter"}}, "handlers": {"console":
    {..., "filters": ["mask"]}}}``: every line that handler writes goes through ``mask_text``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = mask_text(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        return True
