"""What the node's parts see of the node: its shared state and the I/O every part uses.

A Protocol, so that each part (lease, inbox, starts, reconcile, handoff) depends
on this small description rather than on node.py, which builds them. The other
parts are reached through it loosely typed: naming their classes here would tie
every part's module to every other's.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ..conf import HubSettings
from ..runtime import Runtime
from ..values import Row
from .activation import Activation, Origin
from .clock import Clock
from .writes import WriteTracker

Key = tuple[str, str]


class NodeParts(Protocol):
    name: str
    id: str  # the current incarnation
    channel: str
    hs: HubSettings
    clock: Clock
    rt: Runtime
    activations: dict[Key, Activation]
    writes: WriteTracker
    exit_on_stuck_user_code: bool
    lease: Any
    inbox: Any
    starts: Any
    reconciler: Any
    handoff: Any
    rebalancer: Any
    passivator: Any

    def lease_valid(self) -> bool: ...
    def current(self, incarnation: str) -> bool: ...
    def fence_soon(self, reason: str) -> None: ...
    def activate(self, row: Row, origin: Origin) -> Activation: ...
    async def retire_now(self, act: Activation, reason: str) -> None: ...
    async def retire_all(self, reason: str, terminate_budget: float | None) -> None: ...
    def stuck_user_code(self) -> bool: ...
    def stuck_keys(self) -> list[Key]: ...
    async def write(self, fn: Callable[..., Any], *args: Any, keys: Any = None) -> Any: ...
    async def reply(self, reply_to: str | None, corr: str | None, data: dict) -> None: ...
    async def reply_error(self, reply_to: str | None, corr: str | None, code: str, msg: str) -> None: ...
    async def event(self, env: dict) -> None: ...
    def lifecycle(self, event: str, activation: Activation | None = None, **extra: Any) -> None: ...
    def metrics_lease(self, seconds: float, result: str) -> None: ...
