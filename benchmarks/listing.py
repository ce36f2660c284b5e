"""``hub.process_list(tag=...)`` over a million registry rows, against an indexed SELECT on the same table.

The rows are inserted in one ``INSERT ... SELECT generate_series`` and owned by a
node row with a lease valid for an hour and no classes: ``process_list`` counts
them as running (their owner's lease is valid), while no ``runhub`` activates a
million processes and placement sends nothing there. They are deleted at the end,
so the phases after this one run on a registry of the usual size.
"""
from __future__ import annotations

import statistics
import time
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .run import Benchmark

TAG = "needle"


def _explain(sql: str, params: Any) -> tuple[str, float]:
    """The plan PostgreSQL chose for one page query, as a chain of node types (and index), and its own ms."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)
        doc = cur.fetchone()[0]
    doc = doc[0] if isinstance(doc, list) else doc
    chain, node = [], doc["Plan"]
    while node is not None:
        chain.append(node["Node Type"] + (f" ({node['Index Name']})" if node.get("Index Name") else ""))
        kids = node.get("Plans") or []
        node = max(kids, key=lambda k: k.get("Total Cost", 0)) if kids else None
    return " > ".join(chain), float(doc["Execution Time"])


def run(bench: Benchmark) -> None:
    import psycopg
    from django.db import connection

    from processhub import hub
    from processhub.models import Node, Process
    from processhub.transport.envelope import WIRE_VERSION

    from .cluster import BenchError
    from .processes import Bench
    from .run import Row, ms

    s = bench.sizes
    n, needles = s.list_rows, s.list_needles
    every = max(1, n // needles)
    pt, nt = Process._meta.db_table, Node._meta.db_table
    owner = "bench-listing-" + uuid.uuid4().hex[:12]
    bench.say(f"phase 3: process_list(tag=...) over {n:,} rows ({needles:,} tagged {TAG!r})")
    with psycopg.connect(bench.c.database_url, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {nt} (id, name, status, heartbeat_at, lease_expires_at, started_at, host, channel, "
                     f"labels, wire, load) VALUES (%s, 'listing', 'up', now(), now() + interval '1 hour', now(), '', "
                     f"%s, '[]', %s, 0)", (owner, f"{bench.c.prefix}.listing.nobody", WIRE_VERSION))
        t0 = time.perf_counter()
        # Every `every`-th row carries the needle (spread over the whole id order); the others carry an org and
        # a shard tag, so the GIN index holds about as many entries per row as a real registry's.
        conn.execute(
            f"INSERT INTO {pt} (label, process_id, arg, node_id, epoch, status, restart, restarts, last_error, "
            f"started_at, updated_at, metadata, tags, groups, guided) "
            f"SELECT %s, 'list-' || g, to_jsonb(g), %s, 1, 'running', 'permanent', 0, '', now(), now(), '{{}}'::jsonb, "
            f"CASE WHEN g %% %s = 0 THEN jsonb_build_array(%s::text, 'org:' || (g %% 997)) "
            f"ELSE jsonb_build_array('org:' || (g %% 997), 'shard:' || (g %% 16)) END, '[]'::jsonb, false "
            f"FROM generate_series(1, %s) AS g", (Bench.label, owner, every, TAG, n))
        inserted = time.perf_counter() - t0
        t0 = time.perf_counter()
        conn.execute(f"ANALYZE {pt}")
        analyzed = time.perf_counter() - t0
        expect = n // every
        try:
            captured: list[tuple[str, Any]] = []

            def capture(execute, sql, params, many, context):
                captured.append((sql, params))
                return execute(sql, params, many, context)

            with connection.execute_wrapper(capture):
                got = list(hub.process_list(tag=TAG))  # warm-up; its first page's statement is explained below
            if len(got) != expect:
                raise BenchError(f"process_list(tag={TAG!r}) found {len(got)} of {expect} processes")
            sql = f"SELECT id, epoch, node_id, status FROM {pt} WHERE label = %s AND process_id = %s"
            for i in range(50):
                conn.execute(sql, (Bench.label, f"list-{i + 1}")).fetchone()
            listed, pg = [], []
            for r in range(s.list_runs):
                t0 = time.perf_counter()
                got = list(hub.process_list(tag=TAG))
                listed.append(time.perf_counter() - t0)
                for i in range(10):
                    t0 = time.perf_counter()
                    conn.execute(sql, (Bench.label, f"list-{(r * 10 + i) * 7919 % n + 1}")).fetchone()
                    pg.append(time.perf_counter() - t0)
            plans = [_explain(sql_, params) for sql_, params in captured]
        finally:
            t0 = time.perf_counter()
            conn.execute(f"DELETE FROM {pt} WHERE node_id = %s", (owner,))
            conn.execute(f"DELETE FROM {nt} WHERE id = %s", (owner,))
            deleted = time.perf_counter() - t0
    p50, y50 = statistics.median(listed), statistics.median(pg)
    in_pg = sum(t for _, t in plans)
    bench.add(Row("process_list_tag", f"process_list(tag=...): {expect:,} of {n:,} rows, p50", ms(p50), "ms",
                  "PostgreSQL indexed SELECT p50", ms(y50), p50 / y50, "p50 <= 20 ms", ms(p50) <= 20.0,
                  note=f"max {ms(max(listed)):.2f} ms, n={len(listed)}; {len(plans)} page queries per list, "
                       f"{' + '.join(f'{t:.1f}' for _, t in plans)} ms in PostgreSQL (EXPLAIN ANALYZE), the rest "
                       f"of the p50 ({max(0.0, ms(p50) - in_pg):.1f} ms) in Python and on the wire; first page's plan: "
                       f"{plans[0][0]}; the {n:,} rows took {inserted:.1f} s to insert (one INSERT ... "
                       f"SELECT generate_series, GIN-indexed tags), ANALYZE {analyzed:.1f} s, DELETE {deleted:.1f} s"))
