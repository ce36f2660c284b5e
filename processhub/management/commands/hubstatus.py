"""``manage.py hubstatus``: the cluster's nodes and process counts, as a table or as JSON.

It names the transport and database it read them through, passwords masked
(``processhub.masking``), as are database errors.
"""
import json

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connection

from processhub import overview
from processhub.conf import hub_settings
from processhub.masking import mask_text, mask_url


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]

    def line(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=False))).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


class Command(BaseCommand):
    help = "Show the hub's nodes (health, heartbeat age, load) and its processes per class and status."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", dest="as_json", help="Print JSON instead of tables.")
        parser.add_argument("--all-nodes", action="store_true", help="Include nodes that are down (history).")

    def handle(self, *args, as_json=False, all_nodes=False, **options):
        try:
            s = overview.summary(hub_settings().HEARTBEAT_INTERVAL, include_down=all_nodes)
        except DatabaseError as exc:
            raise CommandError(f"cannot read the registry: {mask_text(str(exc))}") from None
        if as_json:
            self.stdout.write(_dumps(s))
            return
        node_rows = [
            [n.name, n.id[:8], n.status, n.health, f"{n.heartbeat_age:.1f}s", str(n.running), f"{n.share:.0%}",
             f"{n.host}/{n.pid if n.pid is not None else ''}", n.started_at.strftime("%Y-%m-%d %H:%M:%S")]
            for n in s.nodes
        ]
        headers = ["NODE", "INCARNATION", "STATUS", "HEALTH", "HEARTBEAT", "RUNNING", "LOAD", "HOST/PID", "STARTED"]
        out = _table(headers, node_rows, {4, 5, 6}) if node_rows else ["No live node."]
        out.append("")
        class_rows = [[c.label, *(str(c.counts.get(st, 0)) for st in s.statuses), str(c.total)] for c in s.classes]
        class_rows.append(["TOTAL", *(str(s.totals.get(st, 0)) for st in s.statuses), str(sum(s.totals.values()))])
        out += _table(["CLASS", *(st.upper() for st in s.statuses), "TOTAL"], class_rows,
                      set(range(1, len(s.statuses) + 2)))
        if s.unowned:
            out += ["", f"{s.unowned} running processes wait for a live node (their owner is gone)."]
        where = _where()
        out += ["", f"Transport: {where['transport']} {where['redis_url']}".rstrip(), f"Database: {where['database']}"]
        self.stdout.write("\n".join(out))


def _where() -> dict[str, str]:
    """The transport and database this command read, without passwords."""
    hs = hub_settings()
    db = connection.settings_dict
    host = f"{db.get('HOST') or 'localhost'}:{db['PORT']}" if db.get("PORT") else (db.get("HOST") or "")
    user = f"{db['USER']}@" if db.get("USER") else ""
    name = f"{user}{host}/{db.get('NAME')}" if host else str(db.get("NAME"))
    return {"transport": hs.transport, "redis_url": mask_url(hs.REDIS_URL) if hs.transport == "redis" else "",
            "database": f"{connection.vendor} {name}"}


def _dumps(s: overview.Summary) -> str:
    data = {
        "nodes": [
            {"name": n.name, "id": n.id, "status": n.status, "health": n.health,
             "heartbeat_age": round(n.heartbeat_age, 3), "running": n.running, "share": round(n.share, 4),
             "host": n.host, "pid": n.pid, "started_at": n.started_at.isoformat() if n.started_at else None}
            for n in s.nodes
        ],
        "classes": [{"label": c.label, "counts": c.counts, "total": c.total} for c in s.classes],
        "totals": s.totals,
        "running": s.running,
        "unowned": s.unowned,
        **_where(),
    }
    return json.dumps(data, indent=2, sort_keys=True)
