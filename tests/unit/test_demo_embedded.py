"""The embedded default: demo pages call live processes through a node inside the web process (issue 2, 9)."""
import re

import pytest
from django.test import override_settings

from processhub.models import Node, NodeStatus


@pytest.fixture
def embedded_web(embedded, client):
    return client


def test_demo_pages_call_processes(embedded_web):
    page = embedded_web.get("/")
    assert page.status_code == 200 and b"embedded" in page.content
    r = embedded_web.get("/counter/visits/")
    assert r.status_code == 200 and re.search(rb'id="count">0<', r.content)
    r = embedded_web.post("/counter/visits/", {"op": "incr"})
    assert re.search(rb'id="count">1<', r.content)
    r = embedded_web.post("/room/lobby/", {"text": "hello", "nick": "ann"})
    assert re.search(rb'<span class="who">ann \(guest\)</span><span class="text">hello</span>', r.content)
    r = embedded_web.post("/counter/visits/", {"op": "crash"})
    assert b"ProcessCrashed" in r.content
    assert Node.objects.filter(status=NodeStatus.UP, name="embedded").exists()


def test_channels_transport_over_in_memory_layer(transactional_db):
    from processhub.runtime import get_runtime, reset_runtime
    from tests.hubtest.processes import Echo

    settings = {"TRANSPORT": "channels", "EMBEDDED": True, "PREFIX": "layer-test"}
    with override_settings(PROCESSHUB=settings,
                           CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}):
        reset_runtime()
        try:
            get_runtime()
            assert Echo.call("via-layer", {"x": 1})["echo"] == {"x": 1}
            Echo.cast("via-layer", {})
            assert Echo.call("via-layer", {})["casts"] == 1
        finally:
            reset_runtime()


def test_metrics_page_is_staff_only(embedded_web, admin_user):
    assert embedded_web.get("/metrics/").status_code == 401
    embedded_web.force_login(admin_user)
    r = embedded_web.get("/metrics/")
    assert r.status_code == 200 and b"processhub" in r.content
