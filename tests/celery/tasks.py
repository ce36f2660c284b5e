"""Tasks only the test workers load (``--include tests.celery.tasks``): they report on the runtime they used."""
import os
import threading

from celery import shared_task

from tests.hubtest.processes import Echo


@shared_task(name="tests.celery.runtime_info")
def runtime_info(process_id: str, sleep: float = 0.0) -> dict:
    """Call Echo ``process_id`` through this OS process's runtime; say which runtime that was.

    ``inherited_pid`` is the pid of the runtime this process held *before* the
    call: another pid means it was inherited through fork() from the parent.
    """
    from processhub import runtime, store

    before = runtime._runtime
    rt = runtime.get_runtime()
    reply = Echo.call(process_id, {"op": "sleep", "s": sleep} if sleep else {})
    live = rt.run_sync(rt.db(store.live_nodes), timeout=10)
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "thread": threading.current_thread().name,
        "inherited_pid": before.pid if before is not None else None,
        "inherited_reply": before.client.reply_channel if before is not None else None,
        "runtime_pid": rt.pid,
        "runtime_id": id(rt),
        "reply_channel": rt.client.reply_channel,
        "hosts_node": rt.node.name if rt.node is not None else None,
        "live_nodes": sorted(n.name for n in live),
        "echo": {"node": reply["node"], "pid": reply["pid"], "epoch": reply["epoch"]},
    }


@shared_task(name="tests.celery.echo_call")
def echo_call(process_id: str, message: dict) -> dict:
    return Echo.call(process_id, message)
