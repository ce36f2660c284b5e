"""The benchmark's own cluster: a throwaway database, ``runhub`` nodes and helper processes, and /proc readings.

Every child dies with the benchmark (PR_SET_PDEATHSIG), so an interrupted run
leaves no node behind; the database is created per run and dropped at the end.
"""
from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
PR_SET_PDEATHSIG = 1


class BenchError(RuntimeError):
    """The benchmark could not set up or measure (a service is down, a node died)."""


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``cond`` until it returns something truthy; BenchError at the deadline."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - the cluster may still be settling
            last = exc
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last!r})")
        time.sleep(interval)


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux: the finally-block of the benchmark still stops its children


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def create_database(base_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(with_database(base_url, "postgres"), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(base_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(with_database(base_url, "postgres"), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Child:
    """One child OS process with its log file."""

    def __init__(self, name: str, popen: subprocess.Popen, log: Path | None) -> None:
        self.name, self.popen, self.log = name, popen, log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def output(self) -> str:
        if self.log is None:
            return ""
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


class BenchCluster:
    """A database, an environment for nodes and clients, and the children started under it."""

    def __init__(self, database_url: str, redis_url: str, settings: dict, log_dir: Path) -> None:
        self.run_id = uuid.uuid4().hex[:8]
        self.prefix = f"phbench{self.run_id}"
        self.base_url = database_url
        self.db_name = f"processhub_bench_{self.run_id}"
        self.database_url = with_database(database_url, self.db_name)
        self.redis_url = redis_url
        self.settings = {**settings, "PREFIX": self.prefix, "TRANSPORT": "redis", "EMBEDDED": False}
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.children: list[Child] = []
        self.nodes: dict[str, Child] = {}
        self.db_created = False
        # With REDIS_URL set, processhub.E004 refuses the demo's fallback key: one random key for the whole run.
        self.secret_key = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(48)

    def env(self, settings: dict | None = None) -> dict[str, str]:
        """The environment of a node or client: the run's settings, then ``settings`` (one node's own) over them."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROCESSHUB_")}
        env.update(
            DJANGO_SETTINGS_MODULE="benchmarks.settings",
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            PYTHONUNBUFFERED="1",
            DJANGO_DEBUG="0",  # as in production: no query log, no debug cursor wrapper
            DJANGO_SECRET_KEY=self.secret_key,
            PROCESSHUB_LOG_LEVEL=os.environ.get("PROCESSHUB_LOG_LEVEL", "WARNING"),
        )
        for key, value in {**self.settings, **(settings or {})}.items():
            env[f"PROCESSHUB_{key}"] = json.dumps(value)
        return env

    def setup_database(self) -> None:
        create_database(self.base_url, self.db_name)
        self.db_created = True
        out = subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"], cwd=ROOT,
                             env=self.env(), capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise BenchError(f"migrate failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")

    def spawn(self, name: str, argv: list[str], log: bool = True, settings: dict | None = None,
              environ: dict[str, str] | None = None, **kw: Any) -> Child:
        path = self.log_dir / f"{name}.log" if log else None
        out = path.open("ab") if path else subprocess.DEVNULL  # a node restarted under its name keeps one log
        popen = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env={**self.env(settings), **(environ or {})},
                                 stdout=kw.pop("stdout", out),
                                 stderr=subprocess.STDOUT if path else subprocess.DEVNULL,
                                 preexec_fn=_die_with_parent, **kw)
        child = Child(name, popen, path)
        self.children.append(child)
        return child

    def worker(self, name: str, *args: str, stdin: bool = False, max_seconds: float = 900) -> Child:
        """A helper from benchmarks.workers; returns once it printed ``ready``."""
        child = self.spawn(name, ["-m", "benchmarks.workers", *args, "--max-seconds", str(max_seconds)],
                           log=False, stdout=subprocess.PIPE, stdin=subprocess.PIPE if stdin else None, text=True)
        line = child.popen.stdout.readline().strip()
        if line != "ready":
            raise BenchError(f"worker {name} did not start (said {line!r})")
        return child

    def start_node(self, name: str, settings: dict | None = None, environ: dict[str, str] | None = None) -> Child:
        """A ``runhub --node name``; ``settings`` are PROCESSHUB settings of this node only (over the run's),
        ``environ`` other environment variables of its own (PYTHONMALLOC)."""
        child = self.spawn(f"node-{name}", [str(ROOT / "manage.py"), "runhub", "--node", name], settings=settings,
                           environ=environ)
        self.nodes[name] = child
        return child

    def wait_up(self, name: str, timeout: float = 60) -> str:
        """Wait until the node registered; return its incarnation id."""
        from processhub.models import Node, NodeStatus

        child = self.nodes[name]

        def up() -> str | None:
            if not child.alive():
                raise BenchError(f"node {name} exited:\n{child.output()}")
            return Node.objects.filter(name=name, pid=child.pid, status=NodeStatus.UP).values_list(
                "id", flat=True).first()

        return wait_for(up, timeout, f"node {name} to register")

    def stop_all(self, timeout: float = 15) -> None:
        for child in self.children:
            child.kill(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            try:
                child.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill(signal.SIGKILL)
                child.popen.wait(5)

    def drop(self) -> None:
        if self.db_created:
            from django.db import connections

            connections.close_all()
            drop_database(self.base_url, self.db_name)
            self.db_created = False


# ------------------------------------------------------------------ /proc


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # After the command name: state is field 3, utime 14, stime 15 (1-based over the whole line).
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")
