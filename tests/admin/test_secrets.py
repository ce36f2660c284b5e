"""Passwords of REDIS_URL / DATABASE_URL never show (issue 9): hubstatus, admin pages, logs, demo error pages."""
import io
import json
import logging
import re
from io import StringIO
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import OperationalError
from django.test import override_settings
from django.urls import reverse

from hubproject.demo import views as demo_views
from processhub import overview
from processhub.exceptions import ProcessCrashed
from processhub.masking import MaskSecretsFilter
from processhub.models import Process, ProcessStatus
from tests.admin.rows import make_node, make_processes

PASSWORD = "hunter2-never-shown"
REDIS_URL = f"redis://:{PASSWORD}@redis.internal:6379/0"
FAILURE = (f"Traceback (most recent call last):\n  File \"x.py\", line 1\n"
           f"redis.exceptions.ConnectionError: Error 111 connecting to {REDIS_URL}. Connection refused.")


def hubstatus(*args) -> str:
    out = StringIO()
    call_command("hubstatus", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_hubstatus_names_its_transport_without_the_password():
    make_processes([make_node("alpha")], 3)
    with override_settings(PROCESSHUB={"REDIS_URL": REDIS_URL}):
        text, data = hubstatus(), json.loads(hubstatus("--json"))
    assert PASSWORD not in text + json.dumps(data)
    assert "Transport: redis redis://:***@redis.internal:6379/0" in text
    assert data["redis_url"] == "redis://:***@redis.internal:6379/0" and data["transport"] == "redis"


def test_hubstatus_masks_database_errors(monkeypatch):
    def unreachable(*args, **kwargs):
        raise OperationalError(f"could not connect: postgres://app:{PASSWORD}@db.internal/app")

    monkeypatch.setattr(overview, "summary", unreachable)
    with pytest.raises(CommandError) as raised:
        hubstatus()
    assert PASSWORD not in str(raised.value) and "postgres://app:***@db.internal/app" in str(raised.value)


@pytest.mark.django_db
def test_admin_pages_mask_passwords_in_errors_and_metadata(admin_client):
    make_processes([make_node("alpha")], 3, failed_every=1)
    p = Process.objects.filter(status=ProcessStatus.FAILED).first()
    Process.objects.filter(pk=p.pk).update(last_error=FAILURE, metadata={"upstream": REDIS_URL})
    pages = [
        reverse("admin:processhub_process_changelist"),
        reverse("admin:processhub_process_change", args=[p.pk]),
        reverse("admin:processhub_overview"),
    ]
    for url in pages:
        html = admin_client.get(url).content.decode()
        assert PASSWORD not in html, url
        assert "redis://:***@redis.internal:6379/0" in html, url


def test_the_projects_log_handler_masks_passwords():
    # hubproject/settings.py LOGGING: the "processhub" logger's handler carries MaskSecretsFilter.
    # The session's leak check attaches a FileHandler of its own; the project's is the stream handler.
    [handler] = [h for h in logging.getLogger("processhub").handlers if type(h) is logging.StreamHandler]
    assert any(isinstance(f, MaskSecretsFilter) for f in handler.filters)
    stream = io.StringIO()
    old = handler.setStream(stream)
    try:
        logging.getLogger("processhub.transport").warning("processhub: reconnecting to %s", REDIS_URL)
    finally:
        handler.setStream(old)
    assert PASSWORD not in stream.getvalue() and "redis://:***@redis.internal" in stream.getvalue()


def test_error_details_are_for_staff_only():
    exc = ProcessCrashed(f"RuntimeError('cannot reach {REDIS_URL}')", "RuntimeError",
                         f"Traceback...\nRuntimeError: cannot reach {REDIS_URL}")
    visitor = demo_views.describe_error(SimpleNamespace(user=SimpleNamespace(is_staff=False)), exc)
    assert visitor == {"type": "ProcessCrashed", "message": demo_views.GENERIC_ERROR, "traceback": ""}
    staff = demo_views.describe_error(SimpleNamespace(user=SimpleNamespace(is_staff=True)), exc)
    assert staff["type"] == "ProcessCrashed" and "redis://:***@redis.internal" in staff["message"]
    assert "Traceback" in staff["traceback"] and PASSWORD not in json.dumps(staff)


def test_demo_error_page_anonymous_vs_staff(embedded, client, admin_user):
    anonymous = client.post("/counter/boom/", {"op": "crash"}).content.decode()
    assert re.search(r"<strong>ProcessCrashed</strong>: The process could not answer", anonymous)
    assert "asked to crash" not in anonymous and "Traceback" not in anonymous
    client.force_login(admin_user)
    staff = client.post("/counter/boom/", {"op": "crash"}).content.decode()
    assert "<strong>ProcessCrashed</strong>" in staff
    assert "asked to crash" in staff and 'id="traceback"' in staff
