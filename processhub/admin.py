"""The Django admin of the registry: nodes, processes, a cluster overview, and operator actions.

Registry rows belong to the protocol, so nothing here adds, edits or deletes
one: the change pages are read-only views. Operators act through actions
(stop, restart, move, drain) that go through the client API
(``processhub.admin_actions``), each behind a permission of its own
(``processhub.stop_process``, ``restart_process``, ``move_process``,
``drain_node``), and are recorded in the admin log. Start arguments and handoff
state show only with ``processhub.view_process_arguments``; error texts are
shown with passwords masked. Actions on more than a few rows run in the
background and report their progress on a ``BulkOperation`` page.
"""
from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, IntegerField, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce, Now
from django.http import HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from . import admin_actions, classes, overview
from .conf import hub_settings
from .masking import mask_text
from .models import BulkOperation, BulkStatus, Node, NodeStatus, Process, ProcessStatus

# Actions on more rows than this are refused: "select all 100,000" is a mistake, not an operation.
MAX_ACTION_ROWS = 1000

HEALTH_COLORS = {overview.FRESH: "#2e7d32", overview.LATE: "#ef6c00", overview.DEAD: "#c62828"}


def health_badge(health: str) -> str:
    return format_html(
        '<span class="ph-health ph-{}" style="color:#fff;background:{};padding:1px 6px;border-radius:3px">{}</span>',
        health, HEALTH_COLORS.get(health, "#777"), health,
    )


def process_list_url(**params: Any) -> str:
    url = reverse("admin:processhub_process_changelist")
    return f"{url}?{urlencode(params)}" if params else url


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def has_perm(request: HttpRequest, codename: str) -> bool:
    return request.user.has_perm(f"processhub.{codename}")


# The permissions that let a user act; each also lets them follow their background operations.
OPERATE_PERMISSIONS = ("stop_process", "restart_process", "move_process", "drain_node")


class RegistryAdmin(admin.ModelAdmin):
    """Read-only rows; each action checks its own permission (``has_<action>_permission``)."""

    show_facets = admin.ShowFacets.NEVER  # one COUNT per filter choice is too much on 100,000 rows

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def report(self, request: HttpRequest, verb: str, outcomes: list[admin_actions.Outcome]) -> None:
        """Log each done row in the admin log and tell the user what happened, with counts."""
        done = [o for o in outcomes if o.status == admin_actions.DONE]
        skipped = [o for o in outcomes if o.status == admin_actions.SKIPPED]
        failed = [o for o in outcomes if o.status == admin_actions.FAILED]
        for o in done:
            self.log_change(request, o.obj, f"{verb}: {o.message}")
        if done:
            detail = "; ".join(f"{o.obj}: {o.message}" for o in done[:5]) + (" …" if len(done) > 5 else "")
            self.message_user(request, f"{verb}: {len(done)} done ({detail}).", messages.SUCCESS)
        if skipped:
            detail = "; ".join(f"{o.obj}: {o.message}" for o in skipped[:5])
            self.message_user(request, f"{verb}: {len(skipped)} skipped ({detail}).", messages.WARNING)
        if failed:
            detail = mask_text("; ".join(f"{o.obj}: {o.message}" for o in failed[:5]))
            self.message_user(request, f"{verb}: {len(failed)} failed ({detail}).", messages.ERROR)

    def too_many(self, request: HttpRequest, queryset: QuerySet) -> bool:
        if queryset.count() > MAX_ACTION_ROWS:
            self.message_user(request, f"Select at most {MAX_ACTION_ROWS} rows for an action.", messages.ERROR)
            return True
        return False


# ====================================================================== nodes


@admin.register(Node)
class NodeAdmin(RegistryAdmin):
    list_display = ("name", "status", "health", "incarnation", "heartbeat_age", "started_at", "running", "host_pid")
    list_filter = ("status",)
    search_fields = ("name", "host", "=id")
    ordering = ("name", "-started_at")
    actions = ("drain", "undrain", "rebalance")
    fields = ("name", "id", "status", "health", "heartbeat_at", "heartbeat_age", "lease_expires_at", "started_at",
              "stopped_at", "host", "pid", "channel", "running", "processes_link")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # A correlated subquery per shown node (the (status, node) index answers it), not a join +
        # GROUP BY over every process row, which the changelist's COUNT would then repeat.
        running = (
            Process.objects.filter(node=OuterRef("pk"), status=ProcessStatus.RUNNING)
            .order_by()
            .values("node")
            .annotate(n=Count("*"))
            .values("n")
        )
        qs = super().get_queryset(request).annotate(
            running_count=Coalesce(Subquery(running, output_field=IntegerField()), 0)
        )
        return overview.with_ages(qs)

    @admin.display(description="health")
    def health(self, obj: Node) -> str:
        return health_badge(overview.node_health(obj, hub_settings().HEARTBEAT_INTERVAL)[0])

    @admin.display(description="incarnation")
    def incarnation(self, obj: Node) -> str:
        return obj.id[:8]

    @admin.display(description="heartbeat age", ordering="heartbeat_at")
    def heartbeat_age(self, obj: Node) -> str:
        return f"{overview.node_health(obj, hub_settings().HEARTBEAT_INTERVAL)[1]:.1f} s"

    @admin.display(description="running", ordering="running_count")
    def running(self, obj: Node) -> str:
        return format_html('<a href="{}">{}</a>', process_list_url(node=obj.id, status__exact="running"),
                           obj.running_count)

    @admin.display(description="host/pid")
    def host_pid(self, obj: Node) -> str:
        return f"{obj.host}/{obj.pid}" if obj.pid is not None else obj.host

    @admin.display(description="processes")
    def processes_link(self, obj: Node) -> str:
        return format_html('<a href="{}">all processes on this node</a>', process_list_url(node=obj.id))

    def has_drain_permission(self, request: HttpRequest) -> bool:
        return has_perm(request, "drain_node")

    @admin.action(description="Drain (move processes away, take no new ones)", permissions=["drain"])
    def drain(self, request: HttpRequest, queryset: QuerySet) -> None:
        if self.too_many(request, queryset):
            return
        self.report(request, "drain", admin_actions.drain_nodes(list(queryset)))

    @admin.action(description="Undrain (take new processes again)", permissions=["drain"])
    def undrain(self, request: HttpRequest, queryset: QuerySet) -> None:
        if self.too_many(request, queryset):
            return
        self.report(request, "undrain", admin_actions.undrain_nodes(list(queryset)))

    @admin.action(description="Rebalance the cluster (move processes to where placement puts them now)",
                  permissions=["drain"])
    def rebalance(self, request: HttpRequest, queryset: QuerySet) -> None:
        self.report(request, "rebalance", admin_actions.rebalance_cluster(queryset.first()))


# ====================================================================== processes


class NodeFilter(admin.SimpleListFilter):
    """Nodes that are not down (by name), plus "no node"; any incarnation id works as a URL value."""

    title = "node"
    parameter_name = "node"

    def lookups(self, request, model_admin):
        nodes = Node.objects.exclude(status=NodeStatus.DOWN).filter(lease_expires_at__gt=Now())
        choices = [(n_id, f"{name} ({n_id[:8]})") for n_id, name in nodes.order_by("name").values_list("id", "name")]
        return [*choices, ("none", "(no node)")]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "none":
            return queryset.filter(node__isnull=True)
        if value:
            return queryset.filter(node_id=value)
        return queryset


class TagFilter(admin.SimpleListFilter):
    """Processes carrying one tag (``?tag=org:7``); the choices are the tags of the rows on the page's first
    hundred processes, since listing every tag of a million rows is a table scan."""

    title = "tag"
    parameter_name = "tag"

    def lookups(self, request, model_admin):
        seen: set[str] = set()
        for tags in Process.objects.exclude(tags=[]).values_list("tags", flat=True)[:100]:
            seen.update(t for t in tags or () if isinstance(t, str))
        value = self.value()
        if value:
            seen.add(value)
        return [(t, t) for t in sorted(seen)[:50]]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        from django.db import connection

        if connection.vendor == "postgresql":
            return queryset.filter(tags__contains=[value])  # jsonb @>, the GIN index
        return queryset.filter(tags__icontains=f'"{value}"')  # SQLite: the JSON text


class LabelFilter(admin.SimpleListFilter):
    """Registered classes: known without a query (a DISTINCT over every row is not)."""

    title = "class"
    parameter_name = "label"

    def lookups(self, request, model_admin):
        return [(label, label) for label in classes.labels()]

    def queryset(self, request, queryset):
        return queryset.filter(label=self.value()) if self.value() else queryset


class CrashedFilter(admin.SimpleListFilter):
    title = "crashed"
    parameter_name = "crashed"

    def lookups(self, request, model_admin):
        return [("yes", "restarted after a crash, or failed")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(Q(restarts__gt=0) | Q(status=ProcessStatus.FAILED))
        return queryset


class ProcessActionForm(helpers.ActionForm):
    """The action bar, with the target of "move" (nodes that take new processes right now)."""

    to_node = forms.ChoiceField(label="Move to node:", required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["to_node"].choices = [("", "---------"), *admin_actions.live_node_choices()]


@admin.register(Process)
class ProcessAdmin(RegistryAdmin):
    list_display = ("process_id", "label", "node_link", "epoch", "status", "tag_list", "restarts", "error",
                    "started_at", "meta")
    list_display_links = ("process_id",)
    list_filter = (NodeFilter, LabelFilter, TagFilter, "status", CrashedFilter, "restart")
    search_fields = ("process_id",)
    list_select_related = ("node",)
    list_per_page = 100
    # The filtered count is enough; a second COUNT over every row is not worth it.
    show_full_result_count = False
    action_form = ProcessActionForm
    actions = ("stop", "restart", "move")
    fieldsets = (
        (None, {"fields": ("process_id", "label", "status", "node_link", "epoch", "restart", "restarts",
                           "started_at", "updated_at")}),
        ("Data", {"fields": ("arg_json", "metadata_json", "handoff_json")}),
        ("Last error", {"fields": ("last_error_pre",)}),
    )
    readonly_fields = ("process_id", "label", "status", "node_link", "epoch", "restart", "restarts", "started_at",
                       "updated_at", "arg_json", "metadata_json", "handoff_json", "last_error_pre")

    @admin.display(description="tags")
    def tag_list(self, obj: Process) -> str:
        tags = obj.tags or []
        return _short(", ".join(str(t) for t in tags), 60) if tags else "-"

    @admin.display(description="node", ordering="node__name")
    def node_link(self, obj: Process) -> str:
        if obj.node_id is None:
            return "-"
        return format_html('<a href="{}">{}</a>', process_list_url(node=obj.node_id), obj.node.name)

    def has_stop_permission(self, request: HttpRequest) -> bool:
        return has_perm(request, "stop_process")

    def has_restart_permission(self, request: HttpRequest) -> bool:
        return has_perm(request, "restart_process")

    def has_move_permission(self, request: HttpRequest) -> bool:
        return has_perm(request, "move_process")

    def has_view_arguments_permission(self, request: HttpRequest) -> bool:
        return has_perm(request, "view_process_arguments")

    def get_fieldsets(self, request: HttpRequest, obj: Any = None):
        if self.has_view_arguments_permission(request):
            return self.fieldsets
        hidden = {"arg_json", "handoff_json"}
        return [(name, {**opts, "fields": tuple(f for f in opts["fields"] if f not in hidden)})
                for name, opts in self.fieldsets]

    @admin.display(description="last error")
    def error(self, obj: Process) -> str:
        return _short(error_line(obj.last_error), 80)

    @admin.display(description="metadata")
    def meta(self, obj: Process) -> str:
        return _short(mask_text(json.dumps(obj.metadata, sort_keys=True)), 60) if obj.metadata else ""

    @admin.display(description="start argument")
    def arg_json(self, obj: Process) -> str:
        return _pre(json.dumps(obj.arg, indent=2, sort_keys=True))

    @admin.display(description="metadata")
    def metadata_json(self, obj: Process) -> str:
        return _pre(mask_text(json.dumps(obj.metadata, indent=2, sort_keys=True)))

    @admin.display(description="handoff state")
    def handoff_json(self, obj: Process) -> str:
        return _pre(json.dumps(obj.handoff, indent=2, sort_keys=True)) if obj.handoff is not None else "-"

    @admin.display(description="last error")
    def last_error_pre(self, obj: Process) -> str:
        return _pre(mask_text(obj.last_error)) if obj.last_error else "-"

    @admin.action(description="Stop", permissions=["stop"])
    def stop(self, request: HttpRequest, queryset: QuerySet) -> HttpResponseRedirect | None:
        return self.run_action(request, queryset, "stop")

    @admin.action(description="Restart (stop + start)", permissions=["restart"])
    def restart(self, request: HttpRequest, queryset: QuerySet) -> HttpResponseRedirect | None:
        return self.run_action(request, queryset, "restart")

    @admin.action(description="Move to the chosen node", permissions=["move"])
    def move(self, request: HttpRequest, queryset: QuerySet) -> HttpResponseRedirect | None:
        to_node = request.POST.get("to_node", "")
        if not to_node:
            self.message_user(request, "Choose a live node in “Move to node” first.", messages.ERROR)
            return None
        return self.run_action(request, queryset, "move", to_node)

    def run_action(self, request: HttpRequest, queryset: QuerySet, kind: str,
                   to_node: str = "") -> HttpResponseRedirect | None:
        """A few rows: act now and report. More: start a background operation and show its progress page."""
        if self.too_many(request, queryset):
            return None
        objs = list(queryset)
        if len(objs) <= admin_actions.INLINE_MAX_ROWS:
            inline = {
                "stop": lambda: admin_actions.stop_processes(objs),
                "restart": lambda: admin_actions.restart_processes(objs),
                "move": lambda: admin_actions.move_processes(objs, to_node),
            }
            self.report(request, kind, inline[kind]())
            return None
        op = admin_actions.start_bulk(kind, objs, request.user, to_node)
        url = reverse("admin:processhub_bulkoperation_change", args=[op.pk])
        self.message_user(request, f"{kind}: {len(objs)} processes, in the background (progress below).",
                          messages.INFO)
        return HttpResponseRedirect(url)

    def get_urls(self):
        return [
            path("overview/", self.admin_site.admin_view(self.overview_view), name="processhub_overview"),
            *super().get_urls(),
        ]

    def overview_view(self, request: HttpRequest) -> TemplateResponse:
        """The cluster at a glance: live nodes and their load, counts per class and status, recent failures."""
        node_admin = self.admin_site._registry.get(Node)
        if not self.has_view_permission(request) or node_admin is None or not node_admin.has_view_permission(request):
            raise PermissionDenied
        hs = hub_settings()
        summary = overview.summary(hs.HEARTBEAT_INTERVAL)
        nodes_page = Paginator(summary.nodes, 50).get_page(request.GET.get("npage"))
        classes_page = Paginator(summary.classes, 50).get_page(request.GET.get("cpage"))
        # Failures are paged by offset without a COUNT: fetch one row more than shown.
        per_page = 20
        try:
            fpage = max(1, int(request.GET.get("fpage", 1)))
        except ValueError:
            fpage = 1
        failures = list(overview.recent_failures()[(fpage - 1) * per_page: fpage * per_page + 1])
        context = {
            **self.admin_site.each_context(request),
            "title": "Cluster overview",
            "opts": self.opts,
            "summary": summary,
            "nodes_page": nodes_page,
            "node_rows": [(n, health_badge(n.health), process_list_url(node=n.id, status__exact="running"),
                           reverse("admin:processhub_node_change", args=[n.id]), round(n.share * 100, 1))
                          for n in nodes_page],
            "classes_page": classes_page,
            "class_rows": [
                (c, process_list_url(label=c.label),
                 [(c.counts.get(s, 0), process_list_url(label=c.label, status__exact=s)) for s in summary.statuses],
                 process_list_url(label=c.label, crashed="yes"))
                for c in classes_page
            ],
            "status_links": [(s, summary.totals.get(s, 0), process_list_url(status__exact=s))
                             for s in summary.statuses],
            "failures": [(p, reverse("admin:processhub_process_change", args=[p.pk]), error_line(p.last_error))
                         for p in failures[:per_page]],
            "fpage": fpage,
            "fprev": fpage - 1 if fpage > 1 else None,
            "fnext": fpage + 1 if len(failures) > per_page else None,
            "processes_url": process_list_url(),
            "nodes_url": reverse("admin:processhub_node_changelist"),
            "crashed_url": process_list_url(crashed="yes"),
            "unowned_url": process_list_url(node="none", status__exact="running"),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/processhub/overview.html", context)


# ====================================================================== background operations


@admin.register(BulkOperation)
class BulkOperationAdmin(admin.ModelAdmin):
    """Progress of the actions that run in the background; the page refreshes itself while one runs."""

    list_display = ("id", "kind", "target", "status", "progress", "failed", "created_by", "created_at", "updated_at")
    list_filter = ("status", "kind")
    list_select_related = ("created_by",)
    fields = ("kind", "target", "status", "progress", "total", "done", "skipped", "failed", "errors_pre",
              "created_by", "created_at", "updated_at")
    readonly_fields = fields

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Whoever may start an operation may follow it, without a separate grant.
        return super().has_view_permission(request, obj) or any(has_perm(request, p) for p in OPERATE_PERMISSIONS)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="progress")
    def progress(self, obj: BulkOperation) -> str:
        return format_html('<progress value="{}" max="{}"></progress> {} / {}', obj.finished, obj.total,
                           obj.finished, obj.total)

    @admin.display(description="failures")
    def errors_pre(self, obj: BulkOperation) -> str:
        return _pre(mask_text(obj.errors)) if obj.errors else "-"

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None):
        extra_context = {**(extra_context or {}), "running_status": BulkStatus.RUNNING}
        return super().change_view(request, object_id, form_url, extra_context)


def _last_line(text: str) -> str:
    """The exception line of a traceback (its last non-empty line)."""
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return ""


def error_line(text: str) -> str:
    """The exception line of a stored traceback, passwords masked (it may name a REDIS_URL or DATABASE_URL)."""
    return mask_text(_last_line(text))


def _pre(text: str) -> str:
    return format_html('<pre style="white-space:pre-wrap;margin:0">{}</pre>', text)
