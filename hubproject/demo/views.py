"""Demo views: plain sync Django views calling processes through the client API."""
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from processhub.exceptions import ProcessHubError
from processhub.masking import mask_text
from processhub.models import Node, NodeStatus, Process

from .processes import ChatRoom, Counter

GENERIC_ERROR = "The process could not answer this request; please try again."


def describe_error(request, exc: ProcessHubError) -> dict[str, str]:
    """The exception type and a generic sentence for visitors; its text and remote traceback for staff.

    A remote traceback or a connection error can name code, data or hosts that
    visitors have no business seeing (issue 9); staff see them with passwords masked.
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
        state = Counter.call(name, {"op": op})
    except ProcessHubError as exc:
        state, error = None, describe_error(request, exc)
    return render(request, "demo/counter.html", {"name": name, "state": state, "error": error})


@require_http_methods(["GET", "POST"])
def room(request, name):
    error = None
    try:
        message = {"op": "post", "text": request.POST.get("text", "")} if request.method == "POST" else {"op": "get"}
        state = ChatRoom.call(name, message)
    except ProcessHubError as exc:
        state, error = None, describe_error(request, exc)
    return render(request, "demo/room.html", {"name": name, "state": state, "error": error})
