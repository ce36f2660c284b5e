"""The live page's JSON and its kill button, without a browser: who sees what, and what the button refuses."""
import os
import socket
import subprocess
import uuid
from datetime import timedelta

import pytest
from django.test import Client, override_settings
from django.utils import timezone

from processhub.models import Node


@pytest.fixture
def fake_node(embedded):
    """A node row naming this host and a pid that is not a runhub (a sleeping child)."""
    child = subprocess.Popen(["sleep", "60"])
    now = timezone.now()
    node = Node.objects.create(id=uuid.uuid4().hex, name="not-a-hub", heartbeat_at=now, started_at=now,
                               lease_expires_at=now + timedelta(seconds=60), host=socket.gethostname(),
                               pid=child.pid, channel="nowhere")
    yield node
    child.kill()
    child.wait(5)


def test_live_state_shows_hosts_to_staff_only(embedded, client, admin_user):
    from hubproject.demo.processes import ChatRoom

    ChatRoom.call("live-room", {"op": "history"})
    state = client.get("/live/state.json").json()
    [node] = [n for n in state["nodes"] if n["name"] == "embedded"]
    assert node["lease_valid"] and node["running"] >= 1 and "pid" not in node and not node["killable"]
    assert {"kind": "room", "id": "live-room", "node": "embedded"}.items() <= next(
        p for p in state["processes"] if p["id"] == "live-room").items()
    client.force_login(admin_user)
    node = next(n for n in client.get("/live/state.json").json()["nodes"] if n["name"] == "embedded")
    assert node["pid"] == os.getpid() and not node["killable"]  # off by default; never the web server itself


def test_kill_button_is_off_by_default(embedded, client, admin_user, fake_node):
    client.force_login(admin_user)
    assert client.post(f"/live/nodes/{fake_node.pk}/kill/").status_code == 404
    assert b"kill" not in client.get("/live/").content.split(b"<h2>Nodes")[1].split(b"</table>")[0].lower()


@override_settings(DEMO_KILL_NODES=True)
def test_kill_button_refuses_what_it_must(embedded, client, admin_user, fake_node):
    url = f"/live/nodes/{fake_node.pk}/kill/"
    assert client.post(url).status_code == 302  # anonymous: to the admin login
    client.force_login(admin_user)
    assert client.get(url).status_code == 405  # POST only
    r = client.post(url)
    assert r.status_code == 409 and "not a runhub node" in r.json()["error"]  # a pid that runs something else
    assert os.waitpid(fake_node.pid, os.WNOHANG) == (0, 0)  # still alive
    embedded_node = Node.objects.get(name="embedded", status="up")
    r = client.post(f"/live/nodes/{embedded_node.pk}/kill/")
    assert r.status_code == 409 and "own node" in r.json()["error"]  # the web server's own node
    csrf = Client(enforce_csrf_checks=True)
    csrf.force_login(admin_user)
    assert csrf.post(url).status_code == 403
