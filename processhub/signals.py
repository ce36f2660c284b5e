"""Django signals for the lifecycle of processes and nodes.

Connect receivers as for any Django signal, typically in an ``AppConfig.ready()``::

    from django.dispatch import receiver
    from processhub.signals import process_crashed

    @receiver(process_crashed)
    def page_someone(sender, label, process_id, node, epoch, reason, **kwargs):
        ...

Where and when they fire:

* In the OS process that hosts the node the event happened on: a ``runhub``
  process, or the web process when the hub runs embedded. A web server that
  only calls processes never sees them.
* On the node's event loop thread, synchronously, right after the fact (the
  database row already says so). A receiver must be quick and must not block:
  no ORM queries (Django refuses sync ORM calls on an event loop thread), no
  network round trips. Hand slow work off, e.g. to a Celery task or with
  ``asyncio.get_running_loop().run_in_executor(...)``.
* Every receiver runs even when another one raises (``send_robust``); a
  receiver's exception is logged and never reaches the process or the node.
* Best effort: a node that is SIGKILLed or loses power sends nothing more. The
  node that takes its processes over sends ``process_started`` for each. Use
  the registry (the ``Process`` rows) for facts that must not be missed.

Process signals are sent with the ``HordeProcess`` subclass as ``sender`` (so
``@receiver(process_started, sender=UserSession)`` works) and these keyword
arguments: ``label`` (registered class label), ``process_id``, ``node`` (node
name), ``node_id`` (the node's incarnation id) and ``epoch`` (the epoch of the
activation the event is about). Node signals are sent with the node class as
``sender`` and ``node``, ``node_id``.

One activation's events come in this order: ``process_started``, then any
number of ``process_crashed`` + ``process_restarted`` + ``process_started``
(a restart in place, epoch + 1), and last ``process_stopped`` (which is also
sent when it moved away, with reason ``"moved"``, right before
``process_moved``). A node that loses its lease stops its activations without
a ``process_stopped`` for each; it sends ``node_down`` once.
"""
from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

logger = logging.getLogger(__name__)

#: An activation finished ``init()`` (and ``end_handoff()`` after a move) and
#: serves messages. Sent on first start, after every restart in place, after a
#: takeover and on the receiving node of a move.
process_started = Signal()

#: An activation ended and will not be restarted in place on this node.
#: ``reason``: ``"stopped"`` (stop() or the admin), ``"normal"`` or the value
#: given to ``exit()``, ``"moved"`` (it runs elsewhere now),
#: ``"crash: <repr>"`` (crashed once too often or was not to be restarted; the
#: row is then ``failed`` or ``stopped``), ``"init failed"``, ``"superseded"``
#: (its row was claimed by another activation). A node that shuts down as the
#: last one leaves its rows for the next boot: reason ``"moved"``, no
#: ``process_moved``.
process_stopped = Signal()

#: A handler raised. ``reason`` is the ``repr()`` of the exception. Sent before
#: the restart decision; a ``process_restarted`` or a ``process_stopped``
#: follows.
process_crashed = Signal()

#: A crashed (or, for permanent processes, exited) activation is restarted in
#: place on the same node; ``epoch`` is the new epoch (the old one + 1).
#: ``reason`` says why the old one ended.
process_restarted = Signal()

#: The process was handed to another node (drain, admin move, ``Client.move``),
#: with handoff state when the class implements ``begin_handoff()``. Sent by the
#: node it left; ``to_node`` names the receiver, ``new_epoch`` is the epoch it
#: runs under there.
process_moved = Signal()

#: A process started somewhere in the hub (its activation finished ``init()``). Unlike the signals above,
#: sent in *every* OS process that has a hub runtime (web servers, Celery workers, nodes), from the events
#: channel: best effort, at most once, possibly late or missing (a message can be lost; a node killed
#: mid-way sends nothing). ``sender`` is the class when it is registered here, else None; keyword
#: arguments ``label``, ``process_id``, ``node``, ``node_id``, ``epoch``. For a local index of processes;
#: the registry (``processhub.hub.process_list``) stays the truth.
process_registered = Signal()

#: A process stopped running on a node (stopped, moved away, failed, gave up; ``reason`` says which), in
#: every OS process with a hub runtime, best effort, like ``process_registered``.
process_unregistered = Signal()

#: This node registered a new incarnation (``node_id``) and takes work.
node_up = Signal()

#: This node asked to drain in place (admin "drain" action or ``Client.drain``):
#: it takes no new processes and hands its processes to the other live nodes,
#: but keeps running until it is stopped or undrained.
node_draining = Signal()

#: A drained node takes new processes again (admin "undrain" action or ``Client.undrain``).
node_undrained = Signal()

#: This incarnation stopped serving. ``reason``: ``"shutdown"`` (SIGTERM, a
#: clean drain) or why it fenced itself (lease lost, database unreachable). A
#: fenced node registers again as a new incarnation and sends ``node_up``.
node_down = Signal()

_PROCESS_SIGNALS = {
    "started": process_started,
    "stopped": process_stopped,
    "crashed": process_crashed,
    "restarted": process_restarted,
    "moved": process_moved,
}
_NODE_SIGNALS = {"node_up": node_up, "node_down": node_down, "node_draining": node_draining,
                 "node_undrained": node_undrained}


def hub_event(env: dict) -> None:
    """Turn a registered/unregistered event from the events channel into its signal (on the runtime's loop)."""
    signal = process_registered if env.get("e") == "registered" else process_unregistered
    if not signal.receivers:
        return
    from . import classes
    from .exceptions import UnknownProcessClass

    try:
        sender: Any = classes.get(env.get("l"))
    except UnknownProcessClass:
        sender = None
    extra = {"reason": str(env.get("reason", ""))} if signal is process_unregistered else {}
    results = signal.send_robust(sender=sender, label=env.get("l"), process_id=env.get("p"), node=env.get("n"),
                                 node_id=env.get("ni"), epoch=env.get("epoch"), **extra)
    for receiver, result in results:
        if isinstance(result, Exception):
            logger.error("processhub: %s receiver %r raised %r", env.get("e"), receiver, result, exc_info=result)


def dispatch(event: str, node: Any, slot: Any, **extra: Any) -> None:
    """A ``Node.listeners`` entry: turn one lifecycle event into its signal (other events are ignored)."""
    if slot is not None:
        signal = _PROCESS_SIGNALS.get(event)
        if signal is None or not signal.receivers:
            return
        results = signal.send_robust(
            sender=slot.cls, label=slot.label, process_id=slot.process_id, node=node.name, node_id=node.id,
            epoch=slot.epoch, **extra,
        )
    else:
        signal = _NODE_SIGNALS.get(event)
        if signal is None or not signal.receivers:
            return
        results = signal.send_robust(sender=type(node), node=node.name, node_id=node.id, **extra)
    for receiver, result in results:
        if isinstance(result, Exception):
            logger.error("processhub: %s receiver %r raised %r", event, receiver, result, exc_info=result)
