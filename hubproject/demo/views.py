"""Demo views: the pages (which then talk to their process over a WebSocket), the live registry, the kill button.

The pages also work without JavaScript: their forms call the process from a
plain sync view through the client API.
"""
import logging
import os
import signal
import socket
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.db.models import BooleanField, Count, DurationField, ExpressionWrapper, F, Q
from django.db.models.functions import Now
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from processhub.exceptions import ProcessHubError
from processhub.masking import mask_text
from processhub.models import Node, NodeStatus, Process

from .processes import ChatRoom, Counter

logger = logging.getLogger(__name__)

GENERIC_ERROR = "The process could not answer this request; please try again."


def describe_error(request, exc: ProcessHubError) -> dict[str, str]:
    """The exception type and a generic sentence for visitors; its text and remote traceback for staff.

    A remote traceback or a connection error can name code, data or hosts that
    visitors have no business seeing; staff see them with passwords masked.
    """
    if not request.user.is_staff:
        return {"type": type(exc).__name__, "message": GENERIC_ERROR, "traceback": ""}
    message = str(exc.args[0]) if exc.args else ""
    return {"type": type(exc).__name__, "message": mask_text(message),
            "traceback": mask_text(getattr(exc, "remote_traceback", "") or "")}


def index(request):
    if request.method == "POST" and request.POST.get("name"):
        kind = "room" if request.POST.get("kind") == "room" else "counter"
        return redirect(f"demo:{kind}", name=request.POST["name"][:100])
    context = {
        "nodes": Node.objects.filter(status=NodeStatus.UP),
        "processes": Process.objects.select_related("node").order_by("-updated_at")[:20],
    }
    return render(request, "demo/index.html", context)


@require_http_methods(["GET", "POST"])
def counter(request, name):
    error = None
    try:
        op = request.POST.get("op", "get") if request.method == "POST" else "get"
        if op == "poke":
            Counter.cast(name, {"op": "poke"})
            op = "get"
        state = Counter.call(name, {"op": op})
    except ProcessHubError as exc:
        state, error = None, describe_error(request, exc)
    return render(request, "demo/counter.html", {"name": name, "state": state, "error": error})


@require_http_methods(["GET", "POST"])
def room(request, name):
    error = None
    try:
        text = request.POST.get("text", "").strip() if request.method == "POST" else ""
        if text:
            ChatRoom.call(name, {"op": "post", "text": text[:500], "user": poster(request)})
        state = ChatRoom.call(name, {"op": "history"})
    except ProcessHubError as exc:
        state, error = None, describe_error(request, exc)
    return render(request, "demo/room.html", {"name": name, "state": state, "error": error})


def poster(request) -> str:
    """The name a message posted through the form is shown with (as RoomConsumer.user_name does)."""
    if request.user.is_authenticated:
        return request.user.get_username()
    nick = request.POST.get("nick", "").strip()[:40]
    return f"{nick} (guest)" if nick else "guest"


# ------------------------------------------------------------------ the live registry page

LIVE_PROCESSES = 200  # rows the live page lists
RECENTLY_DOWN = timedelta(minutes=2)  # a node whose last heartbeat is older leaves the live page


def live(request):
    """Nodes and the demo's processes, refreshed every second by live.js from ``live_state``."""
    return render(request, "demo/live.html", {"kill_enabled": kill_enabled(request)})


@require_GET
def live_state(request):
    """The live page's data: one small JSON document (three queries), polled once a second."""
    age = ExpressionWrapper(Now() - F("heartbeat_at"), output_field=DurationField())
    nodes = (Node.objects.filter(heartbeat_at__gte=Now() - RECENTLY_DOWN)
             .annotate(age=age, running=Count("processes", filter=Q(processes__status="running")),
                       lease_valid=ExpressionWrapper(Q(lease_expires_at__gt=Now()), output_field=BooleanField()))
             .order_by("name", "-started_at"))
    staff = request.user.is_staff
    can_kill = kill_enabled(request)
    here = socket.gethostname()
    node_rows = []
    for n in nodes:
        row = {"id": n.pk, "name": n.name, "status": n.status, "running": n.running,
               "heartbeat_age": round(n.age.total_seconds(), 1) if n.age is not None else None,
               "lease_valid": bool(n.lease_valid) and n.status != NodeStatus.DOWN}
        if staff:
            row.update(host=n.host, pid=n.pid)
        row["killable"] = can_kill and row["lease_valid"] and n.host == here and n.pid not in (None, os.getpid())
        node_rows.append(row)
    procs = (Process.objects.filter(label__in=[ChatRoom.label, Counter.label]).select_related("node")
             .order_by("label", "process_id")[:LIVE_PROCESSES])
    process_rows = [{"label": p.label, "kind": "room" if p.label == ChatRoom.label else "counter",
                     "id": p.process_id, "node": p.node.name if p.node else None, "epoch": p.epoch,
                     "status": p.status, "restarts": p.restarts} for p in procs]
    return JsonResponse({"nodes": node_rows, "processes": process_rows})


def kill_enabled(request) -> bool:
    """The kill button exists only where ``scripts/demo cluster`` turned it on, and only for staff."""
    return bool(getattr(settings, "DEMO_KILL_NODES", False)) and request.user.is_staff


@require_POST
@staff_member_required
def kill_node(request, pk):
    """SIGKILL a ``runhub`` node of this host (the cluster demo's button): its processes move to the others.

    Only a live node whose row names this host, whose pid is not this web
    server's, and whose pid still runs ``runhub`` (a pid can be reused).
    """
    if not kill_enabled(request):
        raise Http404("the kill button is off (DEMO_KILL_NODES)")
    node = get_object_or_404(Node, pk=pk, status__in=[NodeStatus.UP, NodeStatus.DRAINING, NodeStatus.LEAVING])
    if node.host != socket.gethostname() or not node.pid:
        return JsonResponse({"error": f"node {node.name} does not run on this host"}, status=409)
    if node.pid == os.getpid():
        return JsonResponse({"error": f"node {node.name} is this web server's own node"}, status=409)
    try:
        cmdline = Path(f"/proc/{node.pid}/cmdline").read_bytes()
    except OSError:
        cmdline = b""
    if b"runhub" not in cmdline:
        return JsonResponse({"error": f"pid {node.pid} is not a runhub node (any more)"}, status=409)
    os.kill(node.pid, signal.SIGKILL)
    logger.warning("demo: %s killed node %s (pid %s) with SIGKILL", request.user, node.name, node.pid)
    return JsonResponse({"killed": node.name, "pid": node.pid})
