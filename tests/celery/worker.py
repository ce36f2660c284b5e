"""A real ``celery worker`` OS process for tests: started on the cluster's env, always stopped in bounded time.

Each worker consumes its own queue (unique per test), so workers of other test
runs sharing the Redis never take its tasks, nor it theirs.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.cluster.harness import ROOT, Cluster, wait_for


class CeleryWorker:
    def __init__(self, cluster: Cluster, pool: str, log_dir: Path, concurrency: int = 2,
                 hub_node: str | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.cluster = cluster
        self.pool = pool
        self.queue = f"{cluster.prefix}.{pool}.{uuid.uuid4().hex[:6]}"
        self.hostname = f"{self.queue}@%h"
        self.hub_node = hub_node
        self.log = log_dir / f"worker-{self.queue}.log"
        args = [
            sys.executable, "-m", "celery", "-A", "hubproject", "worker",
            "--pool", pool, "--concurrency", str(concurrency), "--queues", self.queue, "--hostname", self.hostname,
            "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO",
            "--include", "tests.celery.tasks",
        ]
        if hub_node:
            args += ["--hub-node", hub_node]
        self.args = [*args, *extra_args]
        self.popen: subprocess.Popen | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> CeleryWorker:
        # Own session: the prefork children can be killed as a group at teardown.
        self.popen = subprocess.Popen(self.args, cwd=ROOT, env=self.cluster.env(), stdout=self.log.open("wb"),
                                      stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"celery worker exited ({self.popen.returncode}):\n{self.output()[-4000:]}")
            return " ready." in self.output()

        wait_for(ready, timeout, f"celery worker {self.queue} to be ready", interval=0.1)
        if self.hub_node:
            from processhub.models import Node, NodeStatus

            wait_for(lambda: Node.objects.filter(name=self.hub_node, pid=self.pid, status=NodeStatus.UP).exists(),
                     timeout, f"hub node {self.hub_node} in the worker")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"celery worker did not exit within {timeout}s:\n{self.output()[-4000:]}") from None

    def group_alive(self) -> bool:
        """Whether any process of the worker's session (main process or pool children) is still alive."""
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # A zombie main process (not yet reaped) still counts; reap it first.
        self.popen.poll()
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (warm shutdown) and wait for the exit code; fails the test after ``timeout``."""
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Warm shutdown, then SIGKILL to the whole process group if it takes longer than ``timeout``."""
        if self.popen is None:
            return
        if self.alive():
            os.kill(self.pid, signal.SIGCONT)
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.popen.poll() is None:
            self.popen.wait(5)
        self._delete_queue()

    def _delete_queue(self) -> None:
        # kombu's Redis transport keeps a queue as a list plus binding sets whose
        # names contain this test's unique queue name, so nothing else matches.
        import redis

        client = redis.Redis.from_url(self.cluster.redis_url)
        try:
            keys = list(client.scan_iter(match=f"*{self.queue}*", count=1000))
            if keys:
                client.delete(*keys)
        except redis.RedisError:
            pass  # an undeleted empty queue is harmless residue
        finally:
            client.close()

    # ------------------------------------------------------------------ tasks

    def send(self, task: Any, *args: Any, **kwargs: Any):
        return task.apply_async(args, kwargs, queue=self.queue)

    def run(self, task: Any, *args: Any, timeout: float = 30.0, **kwargs: Any) -> Any:
        return self.send(task, *args, **kwargs).get(timeout=timeout)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def problems(self) -> list[str]:
        """Log lines no healthy run may print (tasks failing on purpose print their own tracebacks)."""
        bad = ("Task was destroyed but it is pending", "fenced", "heartbeat of", "Unrecoverable error",
               "Process 'ForkPoolWorker", "WorkerLostError", "hung for")
        return [line for line in self.output().splitlines() if any(b in line for b in bad)]


def numsub(redis_client, channel: str) -> int:
    return dict(redis_client.pubsub_numsub(channel)).get(channel.encode(), 0)

