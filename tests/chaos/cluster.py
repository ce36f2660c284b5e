"""Fault injectors for chaos tests: a Cluster whose nodes reach PostgreSQL and Redis through their own proxies.

Every node started by :class:`ChaosCluster` gets two loopback proxies of its own
(one to PostgreSQL, one to Redis), kept across restarts of the same node name, so
a test can cut, blackhole or delay *one* node's link while the others stay
healthy. Process faults are signals: SIGKILL, SIGSTOP/SIGCONT, SIGTERM, and a
restart (new incarnation under the same name).

Node processes are spawned with ``PR_SET_PDEATHSIG`` so that they die with the
test or runner that spawned them, even when that one is killed with SIGKILL.
"""
from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tests.chaos.proxy import Proxy
from tests.cluster.harness import ROOT, Cluster, NodeProc, wait_for

DB, REDIS, BOTH = "db", "redis", "both"

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the caller's clean-up still stops the nodes


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def with_address(url: str, host: str, port: int) -> str:
    """``url`` with its host and port replaced (user, password, path and query kept)."""
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{host}:{port}" if auth else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass
class Links:
    """The two proxies of one node name."""

    db: Proxy
    redis: Proxy

    def pick(self, which: str) -> list[Proxy]:
        if which not in (DB, REDIS, BOTH):
            raise ValueError(f"link must be {DB!r}, {REDIS!r} or {BOTH!r}, not {which!r}")
        return [p for w, p in ((DB, self.db), (REDIS, self.redis)) if which in (w, BOTH)]


class ChaosCluster(Cluster):
    """A :class:`Cluster` with per-node proxies and named fault injectors."""

    def __init__(self, database_url: str, redis_url: str, settings: dict | None = None,
                 log_dir: Path | None = None, env: dict | None = None, prefix: str | None = None) -> None:
        # Recorders write their events straight to Redis, never through a node's faulty link.
        super().__init__(database_url, redis_url, settings, log_dir, {"CHAOS_RECORD_URL": redis_url, **(env or {})})
        if prefix:
            self.prefix = prefix
            self.settings["PREFIX"] = prefix
        self.links: dict[str, Links] = {}
        self.incarnations: dict[str, int] = {}

    # ---------------------------------------------------------------- nodes

    def links_for(self, name: str) -> Links:
        links = self.links.get(name)
        if links is None:
            links = Links(Proxy(*_host_port(self.database_url, 5432)).start(),
                          Proxy(*_host_port(self.redis_url, 6379)).start())
            self.links[name] = links
        return links

    def start_node(self, name: str | None = None, wait: bool = True, database_url: str | None = None,
                   redis_url: str | None = None, proxied: bool = True) -> NodeProc:
        self._count += 1
        name = name or f"n{self._count}"
        if proxied and database_url is None and redis_url is None:
            links = self.links_for(name)
            database_url = with_address(self.database_url, *links.db.address)
            redis_url = with_address(self.redis_url, *links.redis.address)
        log = self.log_dir / f"{name}-{self._count}.log"
        popen = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "runhub", "--node", name],
            cwd=ROOT, env=self.env(database_url, redis_url), stdout=log.open("wb"), stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        node = NodeProc(name, popen, log)
        self.nodes[name] = node
        self.incarnations[name] = self.incarnations.get(name, 0) + 1
        if wait:
            self.wait_up(name)
        return node

    def start_nodes(self, names: list[str], timeout: float = 60.0) -> None:
        """Start several nodes at once (they boot in parallel), then wait for all of them."""
        for name in names:
            self.start_node(name, wait=False)
        for name in names:
            self.wait_up(name, timeout)

    def alive(self, name: str) -> bool:
        node = self.nodes.get(name)
        return node is not None and node.alive()

    # ---------------------------------------------------------------- process faults

    def sigkill(self, name: str) -> None:
        node = self.nodes[name]
        node.signal(signal.SIGKILL)
        node.popen.wait(10)

    def pause(self, name: str) -> None:
        self.nodes[name].signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.nodes[name].signal(signal.SIGCONT)

    def terminate(self, name: str, timeout: float = 30.0) -> int:
        """SIGTERM (drain), and wait for the node to exit; returns its exit code."""
        node = self.nodes[name]
        node.signal(signal.SIGCONT)
        node.signal(signal.SIGTERM)
        return self.wait_exit(name, timeout)

    def restart(self, name: str, hard: bool = True, wait: bool = True) -> NodeProc:
        """Stop ``name`` (SIGKILL when ``hard``, else drain) and start a new incarnation at once."""
        if self.alive(name):
            if hard:
                self.sigkill(name)
            else:
                self.terminate(name)
        return self.start_node(name, wait=wait)

    # ---------------------------------------------------------------- link faults

    def cut(self, name: str, which: str = BOTH) -> None:
        """Reset the node's connections and refuse new ones (a crashed peer, a firewall REJECT)."""
        for proxy in self.links_for(name).pick(which):
            proxy.cut()

    def blackhole(self, name: str, which: str = BOTH) -> None:
        """Drop every byte silently, connections stay open (a partition, a firewall DROP)."""
        for proxy in self.links_for(name).pick(which):
            proxy.blackhole()

    def delay(self, name: str, seconds: float, which: str = BOTH) -> None:
        for proxy in self.links_for(name).pick(which):
            proxy.delay(seconds)

    def heal(self, name: str, which: str = BOTH) -> None:
        for proxy in self.links_for(name).pick(which):
            proxy.heal()

    # ---------------------------------------------------------------- registry views (test database)

    def incarnation(self, name: str) -> str | None:
        """The id of ``name``'s live incarnation in the registry, or None."""
        from django.db.models.functions import Now

        from processhub.models import Node, NodeStatus

        return (Node.objects.filter(name=name, status=NodeStatus.UP, lease_expires_at__gt=Now())
                .order_by("-started_at").values_list("id", flat=True).first())

    def wait_rejoined(self, name: str, old_incarnation: str, timeout: float) -> str:
        """Wait until ``name`` serves under an incarnation other than ``old_incarnation``."""
        def rejoined():
            now = self.incarnation(name)
            return now if now and now != old_incarnation else None

        return wait_for(rejoined, timeout, f"node {name} to rejoin under a new incarnation")

    # ---------------------------------------------------------------- teardown

    def stop_all(self, timeout: float = 20.0) -> None:
        # Heal first: a node draining through a blackholed link would wait for nothing.
        for links in self.links.values():
            for proxy in (links.db, links.redis):
                try:
                    proxy.heal()
                except RuntimeError:
                    pass
        super().stop_all(timeout)

    def close(self, timeout: float = 20.0) -> None:
        try:
            self.stop_all(timeout)
        finally:
            for links in self.links.values():
                links.db.stop()
                links.redis.stop()
            self.links.clear()
