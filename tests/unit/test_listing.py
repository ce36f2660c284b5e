"""hub.process_list read path: pages of ProcessRefs built straight from the cursor's rows (SQLite and PostgreSQL)."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from processhub import hub, store
from processhub.models import Node, Process

LABEL = "tests.listing.Nobody"  # no class: nothing activates these rows


@pytest.mark.parametrize("tags", [
    [], [""], ["a"], ["needle", "org:3"], ["x, y", "a b"], ['q"uote'], ["back\\slash"], ["ünï", "日本"],
    ['a", "b'], ["\n", "\u0001"], ["a", "", "b"], [1, "a"], ["a", 1, "b"], ["a", ["b"], "c"], ["a", {"k": "v"}],
])
def test_tags_text_decodes_like_json(tags):
    # PostgreSQL's jsonb output (", " separators, raw non-ASCII) and what Django and insert_new write.
    for text in (json.dumps(tags, ensure_ascii=False), json.dumps(tags), json.dumps(tags, separators=(",", ":"))):
        assert store._tags(text) == tuple(tags), text
    assert store._tags(tags) == tuple(tags)  # a driver that decodes JSON itself
    assert store._tags(None) == ()


def _rows(n: int, node: Node | None, **fields) -> None:
    Process.objects.bulk_create([Process(label=LABEL, process_id=f"p{i:04d}", node=node, epoch=i + 1,
                                         status="running", **fields) for i in range(n)])


@pytest.fixture
def live_node(db):
    now = timezone.now()
    return Node.objects.create(id="listing-live", name="listing", channel="listing.ch", heartbeat_at=now,
                               lease_expires_at=now + timedelta(hours=1), started_at=now)


def test_a_full_last_page_costs_no_empty_read(live_node, monkeypatch):
    monkeypatch.setattr(hub, "PAGE", 5)
    for n, queries in ((0, 1), (4, 1), (11, 3), (10, 2)):
        Process.objects.all().delete()
        _rows(n, live_node, tags=["needle", "org:1"])
        with CaptureQueriesContext(connection) as ctx:
            got = list(hub.process_list(tag="needle"))
        assert [r.process_id for r in got] == [f"p{i:04d}" for i in range(n)]
        assert len(ctx.captured_queries) == queries, (n, ctx.captured_queries)
    assert len(hub.process_list(tag="needle").page(limit=3)) == 3  # page() still returns at most `limit`


def test_refs_carry_tags_metadata_status_and_node_only_while_running(live_node):
    _rows(3, live_node, tags=['q"uote', "ünï", "org:7"], metadata={"plan": "pro", "n": [1, 2]})
    Process.objects.filter(process_id="p0001").update(status="stopped", node=None, metadata={})
    dead = Node.objects.create(id="listing-dead", name="gone", channel="gone.ch", heartbeat_at=timezone.now(),
                               lease_expires_at=timezone.now() - timedelta(minutes=1), started_at=timezone.now())
    Process.objects.filter(process_id="p0002").update(node=dead, metadata={})
    [live] = hub.process_list(tag="org:7")
    assert (live.process_id, live.node, live.node_id, live.channel, live.epoch, live.status, live.created) == (
        "p0000", "listing", "listing-live", "listing.ch", 1, "running", False)
    assert live.tags == ('q"uote', "ünï", "org:7") and live.metadata == {"plan": "pro", "n": [1, 2]}
    every = {r.process_id: r for r in hub.process_list(label=LABEL, status=None)}
    stopped = every["p0001"]
    assert (stopped.node, stopped.node_id, stopped.status, stopped.metadata) == ("", "", "stopped", {})
    # status=None reads rows as they are: a running row of a dead node still names that node.
    assert (every["p0002"].node, every["p0002"].status) == ("gone", "running")
    assert every["p0001"].metadata == every["p0002"].metadata == {}
    assert every["p0001"].metadata is not every["p0002"].metadata  # never one shared (mutable) dict
    assert [r.process_id for r in hub.process_list(label=LABEL, status="stopped")] == ["p0001"]
    assert [r.process_id for r in hub.process_list(node="gone", status=None)] == ["p0002"]
