"""``processhub.masking``: passwords in URLs and free text become ``***`` (issue 9), as a table."""
import io
import logging
import sys
import uuid

import pytest

from processhub.masking import MaskSecretsFilter, mask_text, mask_url


@pytest.mark.parametrize(
    "url, masked",
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:pw@h", "redis://user:***@h"),
        ("rediss://default:s3cr%40t@cache.example.com:6380/1", "rediss://default:***@cache.example.com:6380/1"),
        ("redis://:p@ss@h/0", "redis://:***@h/0"),  # a raw "@": parsers split at the last one, so do we
        ("postgres://u:pw@h/db", "postgres://u:***@h/db"),
        ("postgresql://u:pw@h:5432/db?sslmode=require", "postgresql://u:***@h:5432/db?sslmode=require"),
        ("redis+sentinel://:pw@s1:26379,s2:26379/mymaster/0", "redis+sentinel://:***@s1:26379,s2:26379/mymaster/0"),
        ("sentinel://:pw@s1:26379;sentinel://:pw2@s2:26379", "sentinel://:***@s1:26379;sentinel://:***@s2:26379"),
        ("redis://h:6379/0?password=pw&db=1", "redis://h:6379/0?password=***&db=1"),
        ("redis://h?sentinel_password=pw", "redis://h?sentinel_password=***"),
        ("unix://:pw@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
        ("redis://:pw@[::1]:6379", "redis://:***@[::1]:6379"),
        # Nothing secret: unchanged.
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("postgres://u@h/db", "postgres://u@h/db"),
        ("postgres://u:@h/db", "postgres://u:@h/db"),
        ("", ""),
        (None, ""),
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    "text, masked",
    [
        ("Error 111 connecting to redis://:pw@10.0.0.1:6379/0. Connection refused.",
         "Error 111 connecting to redis://:***@10.0.0.1:6379/0. Connection refused."),
        ("two: postgres://a:pw@c/d and 'redis://:pw@h:1/0'", "two: postgres://a:***@c/d and 'redis://:***@h:1/0'"),
        ('{"url": "redis://u:pw@h:1/0", "x": 1}', '{"url": "redis://u:***@h:1/0", "x": 1}'),
        ("dsn: host=h user=u password=pw dbname=d", "dsn: host=h user=u password=*** dbname=d"),
        ("{'ENGINE': 'x', 'PASSWORD': 'pw', 'HOST': 'h'}", "{'ENGINE': 'x', 'PASSWORD': '***', 'HOST': 'h'}"),
        ("http://example.com/a@b, mailto:x@y and user@host", "http://example.com/a@b, mailto:x@y and user@host"),
        ("no secrets here", "no secrets here"),
        ("processhub: started app.Room 'r1' node=a epoch=1", "processhub: started app.Room 'r1' node=a epoch=1"),
        ("retry with Api_Token=abc&x=1 and SECRET_KEY='k'", "retry with Api_Token=***&x=1 and SECRET_KEY=***"),
        ("pa\u017fsword=pw", "pa\u017fsword=***"),  # a long s: (?i) matches it, so the quick check must too
    ],
)
def test_mask_text(text, masked):
    assert mask_text(text) == masked


def test_logging_filter_masks_message_arguments_and_traceback():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(MaskSecretsFilter())
    log = logging.getLogger("tests.masking")
    log.addHandler(handler)
    try:
        log.warning("cannot reach %s", "redis://:pw-in-args@h:6379/0")
        try:
            raise ConnectionError("Error connecting to postgres://u:pw-in-exc@h/db")
        except ConnectionError:
            log.exception("giving up")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert "pw-in-args" not in text and "pw-in-exc" not in text
    assert "redis://:***@h:6379/0" in text and "ConnectionError: Error connecting to postgres://u:***@h/db" in text


def test_error_reports_mask_settings_frames_and_the_exception(rf, settings):
    from processhub.reporting import MaskingExceptionReporter

    # Made at run time (the report also quotes this test's source lines), and named like secrets (it shows locals).
    password_a, password_b, password_c = (uuid.uuid4().hex for _ in range(3))
    settings.DATABASE_URL = f"postgres://u:{password_a}@h/db"
    settings.PROCESSHUB = {"REDIS_URL": f"redis://:{password_b}@h:6379/0"}
    settings.DEFAULT_EXCEPTION_REPORTER_FILTER = "processhub.reporting.MaskingExceptionReporterFilter"
    url = f"redis://:{password_c}@h:6379/0"
    try:
        raise ConnectionError(f"cannot reach {url}")
    except ConnectionError:
        reporter = MaskingExceptionReporter(rf.get("/"), *sys.exc_info())
    page = reporter.get_traceback_html() + reporter.get_traceback_text()
    for secret in (password_a, password_b, password_c):
        assert secret not in page
    assert "cannot reach redis://:***@h:6379/0" in page
