"""Demo Celery tasks: the same sync API as a view (``Counter.call(...)``), from a worker."""
from celery import shared_task

from .processes import ChatRoom, Counter


@shared_task
def incr_counter(name: str, by: int = 1) -> dict:
    """Add ``by`` to the counter ``name`` (started on first use) and return its reply."""
    return Counter.call(name, {"op": "incr", "by": by})


@shared_task
def poke_counter(name: str) -> None:
    """Cast to the counter ``name``: fire and forget, at most once."""
    Counter.cast(name, {"op": "poke"})


@shared_task
def crash_counter(name: str) -> dict:
    """Ask the counter to raise: the task fails with ProcessCrashed carrying the remote traceback."""
    return Counter.call(name, {"op": "crash"})


@shared_task
def post_message(room: str, text: str) -> dict:
    """Post to a chat room from a background job."""
    return ChatRoom.call(room, {"op": "post", "text": text})
