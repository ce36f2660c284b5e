"""``HordeProcess``: the base class users subclass, with its callbacks and the class-level client API."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from django.core.exceptions import ImproperlyConfigured

from . import classes, push, store
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
    restart: ClassVar[str] = "permanent"
    shutdown_timeout: ClassVar[float | None] = None
    wait_sleep: ClassVar[float | None] = None
    wait_max: ClassVar[int | None] = None
    max_restarts: ClassVar[int | None] = None
    max_seconds: ClassVar[float | None] = None

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

    def send_after(self, seconds: float, message: Any) -> asyncio.TimerHandle | None:
        """Deliver ``message`` to handle_info() of this instance after ``seconds`` (dropped if it is gone by then).

        Returns the timer handle (cancel it to take the message back) when called on the node's
        loop (async callbacks); from a plain ``def`` callback's thread it returns None.
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
    def start(cls, arg: Any, timeout: float | None = None, node: str | None = None) -> ProcessRef:
        """Start (or find) the process for ``arg``; ``ref.created`` tells whether this call started it."""
        rt = _rt()
        return rt.run_sync(rt.client.start(cls, arg, timeout, node))

    @classmethod
    async def astart(cls, arg: Any, timeout: float | None = None, node: str | None = None) -> ProcessRef:
        rt = _rt()
        return await rt.run_async(rt.client.start(cls, arg, timeout, node))

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
    def call(cls, arg: Any, message: Any, timeout: float | None = None) -> Any:
        """Get-or-start the process, wait for its init, send ``message``; return the reply."""
        return _rt().client.call_blocking(cls, arg, message, timeout)

    @classmethod
    async def acall(cls, arg: Any, message: Any, timeout: float | None = None) -> Any:
        return await _rt().client.acall(cls, arg, message, timeout)

    @classmethod
    def cast(cls, arg: Any, message: Any) -> None:
        """Get-or-start the process and send ``message`` without waiting (at most once)."""
        _rt().client.cast_blocking(cls, arg, message)

    @classmethod
    async def acast(cls, arg: Any, message: Any) -> None:
        await _rt().client.acast(cls, arg, message)

    @classmethod
    def stop(cls, arg: Any, timeout: float | None = None) -> bool:
        """Stop the process (terminate('shutdown'), row marked stopped); False if it was not running."""
        rt = _rt()
        return rt.run_sync(rt.client.stop(cls, arg, timeout))

    @classmethod
    async def astop(cls, arg: Any, timeout: float | None = None) -> bool:
        rt = _rt()
        return await rt.run_async(rt.client.stop(cls, arg, timeout))


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


__all__ = ["HordeProcess", "ProcessRef"]
