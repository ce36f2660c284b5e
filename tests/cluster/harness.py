"""Real multi-node clusters for tests: ``runhub`` OS processes on the test database and Redis."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

# Fast timings so failover tests take seconds, not minutes.
FAST = {
    "HEARTBEAT_INTERVAL": 0.2,
    "NODE_TTL": 1.5,
    "LEASE_SAFETY_MARGIN": 0.3,
    "RECONCILE_INTERVAL": 0.25,
    "SHUTDOWN_TIMEOUT": 3.0,
    "CALL_TIMEOUT": 5.0,
}


class GiveUp(AssertionError):
    """Raised by a polled condition that can never become true (a node that exited): wait_for stops at once."""


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``cond`` until it returns something truthy; fail with ``what`` at the deadline (or at a GiveUp)."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except GiveUp:
            raise
        except Exception as exc:  # noqa: BLE001 - polled conditions may fail while the cluster settles
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})")
        time.sleep(interval)


class NodeProc:
    def __init__(self, name: str, popen: subprocess.Popen, log: Path) -> None:
        self.name, self.popen, self.log = name, popen, log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


class Cluster:
    """Start, stop, kill and pause ``runhub`` nodes; all share one prefix and one database."""

    def __init__(self, database_url: str, redis_url: str, settings: dict | None = None,
                 log_dir: Path | None = None, env: dict | None = None) -> None:
        self.prefix = f"phtest{uuid.uuid4().hex[:10]}"
        self.settings = {**FAST, **(settings or {}), "PREFIX": self.prefix, "TRANSPORT": "redis"}
        self.database_url = database_url
        self.redis_url = redis_url
        self.nodes: dict[str, NodeProc] = {}
        self.log_dir = log_dir or Path(os.environ.get("TMPDIR", "/tmp")) / f"processhub-{self.prefix}"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.extra_env = env or {}
        self._count = 0

    def env(self, database_url: str | None = None, redis_url: str | None = None) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROCESSHUB_")}
        env.update(
            DJANGO_SETTINGS_MODULE="tests.settings",
            DATABASE_URL=database_url or self.database_url,
            REDIS_URL=redis_url or self.redis_url,
            PYTHONUNBUFFERED="1",
            PROCESSHUB_LOG_LEVEL=os.environ.get("PROCESSHUB_LOG_LEVEL", "INFO"),
        )
        for key, value in self.settings.items():
            env[f"PROCESSHUB_{key}"] = json.dumps(value)
        env.update(self.extra_env)
        return env

    def client_settings(self) -> dict:
        return {**self.settings, "REDIS_URL": self.redis_url, "EMBEDDED": False}

    def start_node(self, name: str | None = None, wait: bool = True, database_url: str | None = None,
                   redis_url: str | None = None) -> NodeProc:
        self._count += 1
        name = name or f"n{self._count}"
        log = self.log_dir / f"{name}-{self._count}.log"
        popen = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "runhub", "--node", name],
            cwd=ROOT, env=self.env(database_url, redis_url), stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )
        node = NodeProc(name, popen, log)
        self.nodes[name] = node
        if wait:
            self.wait_up(name)
        return node

    def wait_up(self, name: str, timeout: float = 30.0) -> None:
        from processhub.models import Node, NodeStatus

        node = self.nodes[name]

        def up():
            if not node.alive():
                raise GiveUp(f"node {name} exited:\n{node.output()[-3000:]}")
            return Node.objects.filter(name=name, pid=node.pid, status=NodeStatus.UP).exists()

        wait_for(up, timeout, f"node {name} to register")

    def live_names(self) -> set[str]:
        from django.db.models.functions import Now

        from processhub.models import Node, NodeStatus

        return set(
            Node.objects.filter(status=NodeStatus.UP, lease_expires_at__gt=Now()).values_list("name", flat=True)
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        self.nodes[name].signal(sig)

    def wait_exit(self, name: str, timeout: float = 30.0) -> int:
        node = self.nodes[name]
        wait_for(lambda: not node.alive(), timeout, f"node {name} to exit")
        return node.popen.returncode

    def stop_all(self, timeout: float = 20.0) -> None:
        for node in self.nodes.values():
            node.signal(signal.SIGCONT)
            node.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in self.nodes.values():
            try:
                node.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.signal(signal.SIGKILL)
                node.popen.wait(5)

    def logs(self) -> str:
        return "\n".join(f"===== {n.name} (pid {n.pid})\n{n.output()[-4000:]}" for n in self.nodes.values())
