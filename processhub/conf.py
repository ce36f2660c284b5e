"""One accessor for ``settings.PROCESSHUB`` with documented defaults.

Read lazily (never at import time) and cleared on ``setting_changed`` so that
``override_settings(PROCESSHUB=...)`` works in tests.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULTS: dict[str, Any] = {
    # Seconds between two lease renewals of a node.
    "HEARTBEAT_INTERVAL": 1.0,
    # A node whose lease has not been renewed for this long (database clock) is dead.
    "NODE_TTL": 5.0,
    # A node stops serving this long *before* its lease ends (own monotonic clock),
    # to absorb clock-rate differences between the node and the database.
    "LEASE_SAFETY_MARGIN": 1.0,
    # Seconds between two reconciliations of a node with the database.
    "RECONCILE_INTERVAL": 1.0,
    # Seconds between two full (non-incremental) resyncs of a node's own rows.
    "FULL_RESYNC_INTERVAL": 30.0,
    # Default timeout of call().
    "CALL_TIMEOUT": 5.0,
    # Defaults of the HordeProcess class options of the same (lower-case) name.
    "WAIT_SLEEP": 0.1,
    "WAIT_MAX": 5,
    "MAX_RESTARTS": 3,
    "MAX_SECONDS": 5.0,
    "SHUTDOWN_TIMEOUT": 10.0,
    # "auto" (redis when REDIS_URL is set, else memory), "redis", "memory" or "channels".
    "TRANSPORT": "auto",
    "REDIS_URL": None,
    # redis-py connection keywords added to what REDIS_URL says (ssl_ca_certs, ssl_certfile, ssl_keyfile,
    # ssl_cert_reqs, ssl_check_hostname, username, password).
    "REDIS_OPTIONS": None,
    # Redis behind Sentinel: "host:port" of each sentinel, the master's name, and redis-py keywords for
    # talking to the sentinels themselves (their password, TLS). REDIS_URL still gives the master's password.
    "REDIS_SENTINELS": None,
    "REDIS_SENTINEL_MASTER": None,
    "REDIS_SENTINEL_OPTIONS": None,
    # Channel layer alias used by the "channels" transport.
    "CHANNEL_LAYER": "default",
    # Prefix of every channel name; two hubs sharing one Redis need two prefixes.
    "PREFIX": "processhub",
    # Run a node inside the web process: None = when the transport is "memory".
    "EMBEDDED": None,
    # Name of a node started without --node (default: hostname-pid).
    "NODE_NAME": None,
    # The shared secret that authenticates every message between clients and nodes (None: derived from
    # Django's SECRET_KEY with a purpose string), older secrets still accepted during a rotation (None: derived
    # from SECRET_KEY_FALLBACKS), and how old (in seconds, either way) a message may be when it arrives.
    "SECRET": None,
    "SECRET_FALLBACKS": None,
    "REPLAY_WINDOW": 30.0,
    # Seconds an activation may be idle before it is passivated (None: never); the class option idle_timeout
    # wins over it.
    "IDLE_TIMEOUT": None,
    # "passive": a node that joins takes nothing until asked (hub.rebalance); "active": processes move to the
    # node placement names, with handoff, at most REBALANCE_RATE moves per second in the whole cluster.
    "REBALANCE": "passive",
    "REBALANCE_RATE": 100.0,
    # Most processes one node runs (None: no limit): placement skips full nodes; HubAtCapacity when all are.
    "MAX_PROCESSES_PER_NODE": None,
    # Limits on what clients may send.
    "MAX_ID_LENGTH": 200,
    "MAX_MESSAGE_BYTES": 1_048_576,
    # How many rows a node claims or starts in one statement.
    "BATCH_SIZE": 500,
    # Port for Prometheus metrics of runhub (None: off), the address it binds, and a bearer token
    # that metrics_view accepts instead of a logged-in user with the view_metrics permission.
    "METRICS_PORT": None,
    "METRICS_ADDR": "127.0.0.1",
    "METRICS_TOKEN": None,
    # Seconds a stopped/failed process row or a dead node row is kept (purge task).
    "RETENTION": 7 * 24 * 3600.0,
}


@dataclass(frozen=True)
class HubSettings:
    HEARTBEAT_INTERVAL: float
    NODE_TTL: float
    LEASE_SAFETY_MARGIN: float
    RECONCILE_INTERVAL: float
    FULL_RESYNC_INTERVAL: float
    CALL_TIMEOUT: float
    WAIT_SLEEP: float
    WAIT_MAX: int
    MAX_RESTARTS: int
    MAX_SECONDS: float
    SHUTDOWN_TIMEOUT: float
    TRANSPORT: str
    REDIS_URL: str | None
    REDIS_OPTIONS: dict | None
    REDIS_SENTINELS: list | None
    REDIS_SENTINEL_MASTER: str | None
    REDIS_SENTINEL_OPTIONS: dict | None
    CHANNEL_LAYER: str
    PREFIX: str
    EMBEDDED: bool | None
    NODE_NAME: str | None
    SECRET: str | None
    SECRET_FALLBACKS: list | None
    REPLAY_WINDOW: float
    IDLE_TIMEOUT: float | None
    REBALANCE: str
    REBALANCE_RATE: float
    MAX_PROCESSES_PER_NODE: int | None
    MAX_ID_LENGTH: int
    MAX_MESSAGE_BYTES: int
    BATCH_SIZE: int
    METRICS_PORT: int | None
    METRICS_ADDR: str
    METRICS_TOKEN: str | None
    RETENTION: float

    @property
    def transport(self) -> str:
        if self.TRANSPORT != "auto":
            return self.TRANSPORT
        return "redis" if self.REDIS_URL else "memory"

    @property
    def embedded(self) -> bool:
        if self.EMBEDDED is None:
            return self.transport == "memory"
        return bool(self.EMBEDDED)


@functools.cache
def hub_settings() -> HubSettings:
    from django.conf import settings

    user = dict(getattr(settings, "PROCESSHUB", {}) or {})
    unknown = sorted(set(user) - set(DEFAULTS))
    if unknown:
        raise ImproperlyConfigured(f"Unknown PROCESSHUB settings: {', '.join(unknown)}")
    values = {**DEFAULTS, **user}
    hs = HubSettings(**{f.name: values[f.name] for f in fields(HubSettings)})
    if hs.LEASE_SAFETY_MARGIN >= hs.NODE_TTL or hs.HEARTBEAT_INTERVAL >= hs.NODE_TTL - hs.LEASE_SAFETY_MARGIN:
        raise ImproperlyConfigured(
            "PROCESSHUB needs HEARTBEAT_INTERVAL < NODE_TTL - LEASE_SAFETY_MARGIN "
            f"(got {hs.HEARTBEAT_INTERVAL}, {hs.NODE_TTL}, {hs.LEASE_SAFETY_MARGIN})"
        )
    if hs.REBALANCE not in ("passive", "active"):
        raise ImproperlyConfigured(f"PROCESSHUB REBALANCE must be 'passive' or 'active', not {hs.REBALANCE!r}")
    if hs.transport not in ("redis", "memory", "channels"):
        raise ImproperlyConfigured(
            f"PROCESSHUB TRANSPORT must be auto, redis, memory or channels, not {hs.TRANSPORT!r}"
        )
    return hs


def envelope_keys(hs: HubSettings) -> Any:
    """The keys of this hub's envelopes: SECRET (else Django's SECRET_KEY) and the fallbacks still accepted."""
    from django.conf import settings

    from .transport.envelope import Keys

    if hs.SECRET:
        return Keys(hs.SECRET, hs.SECRET_FALLBACKS or ())
    fallbacks: Any = hs.SECRET_FALLBACKS
    if fallbacks is None:
        fallbacks = getattr(settings, "SECRET_KEY_FALLBACKS", ())
    return Keys(settings.SECRET_KEY, fallbacks or ())


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == "PROCESSHUB":
        hub_settings.cache_clear()
