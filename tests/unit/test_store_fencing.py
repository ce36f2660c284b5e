"""Protocol statements refuse what would break I1/I6, on the real database (regressions from review)."""
from datetime import timedelta

import pytest
from django.db.models.functions import Now
from django.utils import timezone

from processhub import store
from processhub.exceptions import ProcessCrashed
from processhub.models import Node, NodeStatus, Process, ProcessStatus
from processhub.values import StartSpec
from tests.hubtest.processes import BadConstructor, Echo


def node(nid, status=NodeStatus.UP, alive=True):
    now = timezone.now()
    return Node.objects.create(id=nid, name=nid, status=status, heartbeat_at=now, started_at=now, channel=nid,
                               lease_expires_at=now + timedelta(seconds=60 if alive else -60))


def row(owner, epoch=3, status=ProcessStatus.RUNNING):
    return Process.objects.create(label="hubtest.Echo", process_id=f"r{epoch}{owner}", node_id=owner, epoch=epoch,
                                  status=status, arg="x")


@pytest.mark.django_db
def test_move_refuses_a_target_that_is_leaving_or_dead():
    node("a")
    node("b", status=NodeStatus.LEAVING)
    node("c", alive=False)
    node("e", status=NodeStatus.DOWN)
    r = row("a")
    assert store.move(r.id, "a", 3, "b") is None
    assert store.move(r.id, "a", 3, "c") is None
    assert store.move(r.id, "a", 3, "e") is None
    node("d", status=NodeStatus.DRAINING)  # placement picks a drained node only when no node that is up can
    assert store.move(r.id, "a", 3, "d") == 4


@pytest.mark.django_db
def test_takeover_claim_does_not_undo_a_stop():
    node("dead", alive=False)
    node("me")
    r = row("dead")
    assert store.stop_orphan(r.label, r.process_id, 3)
    assert store.claim("me", [(r.id, 3)]) == []  # saw it running at epoch 3, but it was stopped since
    assert Process.objects.get(id=r.id).status == ProcessStatus.STOPPED
    # A start of the stopped row is a restart claim, and that one succeeds.
    got = store.claim("me", [(r.id, 3)], StartSpec("new-arg", "permanent"))
    assert got and got[0].epoch == 4 and got[0].arg == "new-arg"


@pytest.mark.django_db
def test_claim_needs_a_valid_lease_and_the_seen_epoch():
    node("dead", alive=False)
    node("expired", alive=False)
    node("me")
    r = row("dead")
    assert store.claim("expired", [(r.id, 3)]) == []
    assert store.claim("me", [(r.id, 2)]) == []
    assert [x.epoch for x in store.claim("me", [(r.id, 3)])] == [4]
    assert store.claim("me", [(r.id, 3)]) == []  # the second claimer of the same epoch loses


@pytest.mark.django_db
def test_heartbeat_never_revives_an_expired_lease():
    node("late", alive=False)
    assert store.heartbeat("late", 5.0) is False
    node("ok")
    assert store.heartbeat("ok", 5.0) is True
    assert Node.objects.filter(id="ok", lease_expires_at__gt=Now()).exists()


def test_constructor_that_raises_fails_cleanly(embedded):
    with pytest.raises(ProcessCrashed, match="constructor refuses"):
        BadConstructor.start("bc")
    assert Process.objects.get(process_id="bc").status == ProcessStatus.FAILED
    assert Echo.call("after", {})["epoch"] == 1
