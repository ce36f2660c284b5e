"""``HordeProcess``: the base class users subclass, with its callbacks and the class-level client API."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar

from django.core.exceptions import ImproperlyConfigured

from . import classes, push, store, wire
from .client import StartManyResult, start_with
from .exceptions import InvalidArgument
from .runtime import get_runtime
from .values import ProcessRef

_POLICIES = ("permanent", "transient", "temporary")
_pending: list[type] = []  # classes defined before the app registry was ready


def _default(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Marks a callback of the base class, which does nothing: the node skips what a subclass did not define."""
    fn.__processhub_default__ = True  # type: ignore[attr-defined]
    return fn


def _rt():
    return get_runtime()  # imported at module level: an import statement per call cost ~2 us


class HordeProcess:
    """One long-lived process per id, at most one live activation in the cluster.

    Subclass it in an installed app's ``processes.py``; the class is registered
    under ``app_label.ClassName``. Callbacks may be ``async def`` or plain ``def``
    (plain ones run in a worker thread, so the ORM can be used directly).
    """

    abstract: ClassVar[bool] = True
    label: ClassVar[str] = ""

    # Class options; None means "the PROCESSHUB setting of the same name".
    # The restart policy, a string; on a class it is also callable: ``Room.restart(arg)`` (see RestartPolicy).
    restart: ClassVar[Any] = "permanent"
    shutdown_timeout: ClassVar[float | None] = None
    wait_sleep: ClassVar[float | None] = None
    wait_max: ClassVar[int | None] = None
    max_restarts: ClassVar[int | None] = None
    max_seconds: ClassVar[float | None] = None
    # Declared singletons: start arguments of processes the hub keeps running from the first node's boot on
    # (reconcile starts any that is missing, stopped or failed, for as long as it is declared here).
    autostart: ClassVar[Sequence[Any]] = ()
    # Seconds without a message or a pending timer before the process is passivated (None: the IDLE_TIMEOUT
    # setting, which defaults to never).
    idle_timeout: ClassVar[float | None] = None

    # Set on every instance before init(): its id, the node (name and incarnation id) and the epoch it runs under.
    process_id: str
    node: str
    node_id: str
    epoch: int
    _activation: Any  # the node's activation loop of this process (processhub.node.activation.Activation)
    _exit_reason: str | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("abstract"):
            return
        cls.abstract = False
        if cls.restart not in _POLICIES:
            raise ImproperlyConfigured(f"{cls.__qualname__}.restart must be one of {_POLICIES}, not {cls.restart!r}")
        cls.restart = RestartPolicy(cls.restart, cls)
        from django.apps import apps

        if apps.apps_ready:
            _register(cls)
        else:
            _pending.append(cls)

    # ------------------------------------------------------------------ callbacks

    @classmethod  # type: ignore[no-redef]  # also the instance attribute of that name
    def process_id(cls, arg: Any) -> str:
        """The unique id for ``arg``; the default accepts a str or an int."""
        if isinstance(arg, str):
            return arg
        if isinstance(arg, int) and not isinstance(arg, bool):
            return str(arg)
        raise InvalidArgument(f"{cls.__qualname__}.process_id() cannot make an id of {arg!r}; override it")

    @_default
    async def init(self, arg: Any) -> None:
        """Fast set-up; the process serves messages once this returns."""

    @_default
    async def handle_continue(self) -> None:
        """Slow set-up after registration (database loads)."""

    @_default
    async def handle_call(self, message: Any) -> Any:
        """Handle a call; the return value (JSON data) is the reply."""
        raise NotImplementedError(f"{type(self).__qualname__} does not handle calls")

    @_default
    async def handle_cast(self, message: Any) -> None:
        """Handle a cast (no reply)."""

    @_default
    async def handle_info(self, message: Any) -> None:
        """Handle a timer message from send_after()."""

    @_default
    async def terminate(self, reason: str) -> None:
        """Called when the activation ends: 'shutdown', 'handoff', 'lease lost', 'crash: ...'."""

    @_default
    async def begin_handoff(self) -> Any:
        """Return JSON state to hand to the next activation when this one moves (drain, admin move)."""
        return None

    @_default
    async def end_handoff(self, state: Any) -> None:
        """Receive the state returned by begin_handoff() of the previous activation (after init)."""

    # ------------------------------------------------------------------ inside a process

    @property
    def tags(self) -> tuple[str, ...]:
        """This process's tags (stored with its row; ``hub.process_list(tag=...)`` finds it by them)."""
        return self._activation.tags

    @property
    def metadata(self) -> dict[str, Any]:
        """This process's metadata (a JSON object stored with its row)."""
        return self._activation.metadata

    @property
    def groups(self) -> tuple[str, ...]:
        """The process groups this process joined (``join``); membership is stored with its row."""
        return self._activation.groups

    def set_tags(self, tags: Iterable[str]) -> Any:
        """Replace this process's tags, stored with its row (fenced on its epoch) and visible to queries at once.

        In an async callback ``await`` it; in a plain ``def`` callback it returns when stored.
        Raises ``InvalidArgument`` for bad tags, ``Fenced`` when this instance no longer owns its row.
        """
        return self._annotate(tags=wire.check_tags(list(tags)))

    def set_metadata(self, metadata: dict[str, Any]) -> Any:
        """Replace this process's metadata (a JSON object), like ``set_tags``."""
        return self._annotate(metadata=wire.check_metadata(metadata))

    def join(self, group: str) -> Any:
        """Join a process group (Swarm's ``join``): ``hub.members``/``publish``/``multi_call`` reach it there.

        Membership is stored with the row, so it follows the process through restarts, moves and failover.
        Like ``set_tags``: await it in async callbacks.
        """
        group = _check_group(group)
        return self._annotate(groups=self.groups if group in self.groups else (*self.groups, group))

    def leave(self, group: str) -> Any:
        """Leave a process group (see ``join``)."""
        group = _check_group(group)
        return self._annotate(groups=tuple(g for g in self.groups if g != group))

    def _annotate(self, **changes: Any) -> Any:
        act, epoch = self._activation, self.epoch
        loop = act.host.rt.loop
        if _on_loop(loop):
            return asyncio.ensure_future(act.annotate(epoch, **changes))
        return asyncio.run_coroutine_threadsafe(act.annotate(epoch, **changes), loop).result(
            act.host.hs.CALL_TIMEOUT)

    def send_after(self, seconds: float, message: Any) -> Any:
        """Deliver ``message`` to handle_info() of this instance after ``seconds`` (dropped if it is gone by then).

        Returns a timer (``cancel()`` takes the message back) when called on the node's loop (async
        callbacks); from a plain ``def`` callback's thread it returns None. While a timer is pending the
        process is not idle (``idle_timeout``).
        """
        activation, epoch = self._activation, self.epoch
        loop = activation.host.rt.loop
        if _on_loop(loop):
            return activation.timer(seconds, message, epoch)
        loop.call_soon_threadsafe(activation.timer, seconds, message, epoch)
        return None

    @property
    def channel_group(self) -> str:
        """This process's Channels group: the one ``processhub.consumers`` consumers of it join."""
        return push.channel_group(self.label, self.process_id)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send ``message`` (a dict with a ``"type"``) to a Channels group through the project's channel layer.

        ``await self.group_send(self.channel_group, {"type": "process.push", "data": ...})`` reaches every
        browser tab connected to this process through a ``ProcessConsumer``, on any web server.
        """
        await push.group_send(group, message)

    def group_send_sync(self, group: str, message: dict[str, Any]) -> None:
        """``group_send`` from a plain ``def`` callback (it runs in a worker thread): waits until sent."""
        loop = self._activation.host.rt.loop
        asyncio.run_coroutine_threadsafe(push.group_send(group, message), loop).result(
            self._activation.host.hs.CALL_TIMEOUT)

    def exit(self, reason: str = "normal") -> None:
        """End this process after the current handler ('normal' counts as a clean exit)."""
        self._exit_reason = reason

    @contextlib.contextmanager
    def fenced(self) -> Iterator[None]:
        """A transaction that commits only while this instance still owns its epoch (DESIGN I4).

        Use it from sync code (a plain ``def`` handler or ``run_fenced``). It locks
        the process row and checks, in the database's clock, that this node's lease
        is valid and the row still names this node and epoch; raises ``Fenced``
        otherwise, or when the lease ends before the block does (the transaction
        then rolls back). Keep the block short: a node that takes the process over
        from a frozen owner ends the frozen owner's fenced transaction.
        """
        with store.fenced(self._activation.fence_token(self.epoch)):
            yield

    async def run_fenced(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run the sync ``fn(*args)`` in a DB thread inside ``fenced()``; returns its result."""

        def body() -> Any:
            with self.fenced():
                return fn(*args)

        return await self._activation.host.rt.db(body)

    # ------------------------------------------------------------------ client API

    @classmethod
    def start(cls, arg: Any, timeout: float | None = None, node: str | None = None, tags: Iterable[str] = (),
              metadata: dict[str, Any] | None = None) -> ProcessRef:
        """Start (or find) the process for ``arg``; ``ref.created`` tells whether this call started it.

        ``node`` names a node (guided placement); ``tags`` and ``metadata`` are stored with the row when this
        call creates it (or restarts a stopped one).
        """
        rt = _rt()
        return rt.run_sync(rt.client.start(cls, arg, timeout, node, tags, metadata))

    @classmethod
    async def astart(cls, arg: Any, timeout: float | None = None, node: str | None = None, tags: Iterable[str] = (),
                     metadata: dict[str, Any] | None = None) -> ProcessRef:
        rt = _rt()
        return await rt.run_async(rt.client.start(cls, arg, timeout, node, tags, metadata))

    @classmethod
    def start_many(cls, args: Iterable[Any], *, on_failure: str = "continue", timeout: float | None = None,
                   tags: Iterable[str] = (), metadata: dict[str, Any] | None = None) -> StartManyResult:
        """Start many processes at once (one message per target node; batched inserts there).

        Returns ``.refs`` (id -> ProcessRef) and ``.errors`` (id -> ProcessHubError). With
        ``on_failure="rollback"``, any error stops every process this call created and raises
        ``StartManyFailed`` (carrying the errors).
        """
        rt = _rt()
        return rt.run_sync(rt.client.start_many(cls, list(args), on_failure, timeout, tags, metadata))

    @classmethod
    async def astart_many(cls, args: Iterable[Any], *, on_failure: str = "continue", timeout: float | None = None,
                          tags: Iterable[str] = (), metadata: dict[str, Any] | None = None) -> StartManyResult:
        rt = _rt()
        return await rt.run_async(rt.client.start_many(cls, list(args), on_failure, timeout, tags, metadata))

    @classmethod
    def stop_many(cls, args: Iterable[Any], timeout: float | None = None) -> list[str]:
        """Stop many processes; returns the ids of those that ran and are stopped now."""
        rt = _rt()
        return rt.run_sync(rt.client.stop_many(cls, list(args), timeout))

    @classmethod
    async def astop_many(cls, args: Iterable[Any], timeout: float | None = None) -> list[str]:
        rt = _rt()
        return await rt.run_async(rt.client.stop_many(cls, list(args), timeout))

    @classmethod
    def fetch(cls, arg: Any) -> ProcessRef | None:
        """Where the process runs, or None; never starts it."""
        return _rt().client.fetch_blocking(cls, arg)

    @classmethod
    async def afetch(cls, arg: Any) -> ProcessRef | None:
        rt = _rt()
        ref = rt.client.cached(rt.client.key_for(cls, arg))
        if ref is not None:
            return ref
        return await rt.run_async(rt.client.fetch(cls, arg))

    @classmethod
    def call(cls, arg: Any, message: Any, timeout: float | None = None, *, start: bool = True,
             tags: Iterable[str] = (), metadata: dict[str, Any] | None = None) -> Any:
        """Send ``message`` and return the reply; starts the process first (and waits for its init) unless
        ``start=False``, which raises ``ProcessNotRunning`` for a process that does not run."""
        return _rt().client.call_blocking(cls, arg, message, timeout, start_with(start, tags, metadata))

    @classmethod
    async def acall(cls, arg: Any, message: Any, timeout: float | None = None, *, start: bool = True,
                    tags: Iterable[str] = (), metadata: dict[str, Any] | None = None) -> Any:
        return await _rt().client.acall(cls, arg, message, timeout, start_with(start, tags, metadata))

    @classmethod
    def cast(cls, arg: Any, message: Any, *, start: bool = True, tags: Iterable[str] = (),
             metadata: dict[str, Any] | None = None) -> None:
        """Send ``message`` without waiting (at most once); starts the process first unless ``start=False``."""
        _rt().client.cast_blocking(cls, arg, message, start_with(start, tags, metadata))

    @classmethod
    async def acast(cls, arg: Any, message: Any, *, start: bool = True, tags: Iterable[str] = (),
                    metadata: dict[str, Any] | None = None) -> None:
        await _rt().client.acast(cls, arg, message, start_with(start, tags, metadata))

    @classmethod
    def stop(cls, arg: Any, timeout: float | None = None) -> bool:
        """Stop the process (terminate('shutdown'), row marked stopped); False if it was not running."""
        rt = _rt()
        return rt.run_sync(rt.client.stop(cls, arg, timeout))

    @classmethod
    async def astop(cls, arg: Any, timeout: float | None = None) -> bool:
        rt = _rt()
        return await rt.run_async(rt.client.stop(cls, arg, timeout))

    @classmethod
    def _restart_now(cls, arg: Any, timeout: float | None = None) -> ProcessRef:
        rt = _rt()
        return rt.run_sync(rt.client.restart(cls, arg, timeout))

    @classmethod
    async def arestart(cls, arg: Any, timeout: float | None = None) -> ProcessRef:
        rt = _rt()
        return await rt.run_async(rt.client.restart(cls, arg, timeout))

    @classmethod
    def move(cls, arg: Any, node: str, timeout: float | None = None) -> bool:
        """Hand the running process to the live node ``node`` (name or id), with ``begin_handoff`` state;
        False when it was not running or moved on meanwhile."""
        rt = _rt()
        return rt.run_sync(rt.client.move_process(cls, arg, node, timeout))

    @classmethod
    async def amove(cls, arg: Any, node: str, timeout: float | None = None) -> bool:
        rt = _rt()
        return await rt.run_async(rt.client.move_process(cls, arg, node, timeout))

    @classmethod
    def list(cls, tag: str | None = None, node: str | None = None) -> Any:
        """This class's running processes (``hub.process_list(label=cls.label, tag=tag, node=node)``)."""
        from .hub import process_list

        return process_list(label=cls.label, tag=tag, node=node)


class RestartPolicy(str):
    """A class's restart policy ("permanent", "transient", "temporary"), which is also the operation
    ``Room.restart(arg, timeout=None)``: stop the process if it runs, then start it again with ``arg`` (a fresh
    ``init()``, a larger epoch). Subclasses set the policy as a plain string (``restart = "transient"``);
    the class turns it into this callable string, equal to that string everywhere.
    """

    def __new__(cls, policy: str, owner: type) -> RestartPolicy:
        made = super().__new__(cls, policy)
        made._owner = owner  # type: ignore[attr-defined]
        return made

    def __call__(self, arg: Any, timeout: float | None = None) -> ProcessRef:
        return self._owner._restart_now(arg, timeout)  # type: ignore[attr-defined]

    def __reduce__(self) -> Any:
        return (str, (str(self),))  # pickles (Celery, caches) as the plain policy string


def _check_group(group: Any) -> str:
    return wire.check_tags([group])[0]


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _register(cls: type[HordeProcess]) -> None:
    cls.label = classes.register(cls)


def register_pending() -> None:
    """Register classes defined before the app registry was ready (called from AppConfig.ready)."""
    while _pending:
        _register(_pending.pop())


HordeProcess.restart = RestartPolicy("permanent", HordeProcess)

__all__ = ["HordeProcess", "ProcessRef", "RestartPolicy"]
