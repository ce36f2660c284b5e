"""Database models: the registry's source of truth (DESIGN "Truth: the database")."""
from __future__ import annotations

from django.conf import settings
from django.db import models


class NodeStatus(models.TextChoices):
    # Takes new processes.
    UP = "up", "up"
    # Drained: moves its processes away and takes only those no node that is up can run.
    DRAINING = "draining", "draining"
    # Shutting down (SIGTERM): hands everything away and takes nothing.
    LEAVING = "leaving", "leaving"
    DOWN = "down", "down"


class ProcessStatus(models.TextChoices):
    # Desired to run: on ``node`` at ``epoch``, or waiting for a node when node is NULL.
    RUNNING = "running", "running"
    # Exited normally or stopped on request: not restarted.
    STOPPED = "stopped", "stopped"
    # Crashed more than max_restarts in max_seconds, or init failed: not restarted.
    FAILED = "failed", "failed"
    # Passivated after idle_timeout: desired, not running; the next message activates it again.
    IDLE = "idle", "idle"


class RestartPolicy(models.TextChoices):
    PERMANENT = "permanent", "permanent"
    TRANSIENT = "transient", "transient"
    TEMPORARY = "temporary", "temporary"


class Node(models.Model):
    """One incarnation of a ``runhub`` node: a restart under the same name is a new row."""

    id = models.CharField(primary_key=True, max_length=32, help_text="Incarnation token.")
    name = models.CharField(max_length=200, db_index=True)
    status = models.CharField(max_length=16, choices=NodeStatus.choices, default=NodeStatus.UP)
    # Both set from the database clock (now()), never from the node's wall clock (DESIGN I2).
    heartbeat_at = models.DateTimeField()
    lease_expires_at = models.DateTimeField(db_index=True)
    started_at = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)
    host = models.CharField(max_length=255, blank=True)
    pid = models.IntegerField(null=True, blank=True)
    channel = models.CharField(max_length=255)
    # The class labels this incarnation can run: placement never sends a process to a node without its class.
    labels = models.JSONField(default=list, blank=True)
    # The envelope format it speaks (processhub.transport.envelope.WIRE_VERSION): clients place nothing on a
    # node of another version and name the mismatch when a process runs on one. Rows of 0.1 nodes default to 1.
    wire = models.PositiveSmallIntegerField(default=1)
    # Activations it ran at its last heartbeat: placement skips nodes at MAX_PROCESSES_PER_NODE.
    load = models.IntegerField(default=0)

    class Meta:
        ordering = ["name", "-started_at"]
        permissions = [("drain_node", "Can drain and undrain nodes")]

    def __str__(self) -> str:
        return f"{self.name} ({self.id[:8]})"


class Process(models.Model):
    """One process id: its desired state and, while it runs, its owner and epoch."""

    process_id = models.CharField(max_length=255)
    label = models.CharField(max_length=200, db_index=True, help_text="Registered class label.")
    arg = models.JSONField(null=True, blank=True, help_text="Start argument (JSON).")
    node = models.ForeignKey(
        Node, null=True, blank=True, on_delete=models.SET_NULL, related_name="processes", db_index=True
    )
    # Grows on every claim (start, takeover, restart, move): the fencing token (DESIGN I1, I4).
    epoch = models.BigIntegerField(default=0)
    status = models.CharField(max_length=16, choices=ProcessStatus.choices, default=ProcessStatus.RUNNING)
    restart = models.CharField(max_length=16, choices=RestartPolicy.choices, default=RestartPolicy.PERMANENT)
    restarts = models.IntegerField(default=0)
    last_error = models.TextField(blank=True)
    handoff = models.JSONField(null=True, blank=True, help_text="State handed from the old owner to the new.")
    started_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    # Short strings to find processes by (hub.process_list(tag=...)); GIN-indexed on PostgreSQL.
    tags = models.JSONField(default=list, blank=True)
    # The process groups it joined (HordeProcess.join): membership lives with the row, so it follows the
    # process through restarts, moves and failover.
    groups = models.JSONField(default=list, blank=True)
    # Started on a named node (node=...): rebalancing leaves it where it is.
    guided = models.BooleanField(default=False)
    # The start_many call that created (or restarted) it, for that call's rollback.
    start_token = models.CharField(max_length=32, null=True, blank=True, db_index=True)

    class Meta:
        verbose_name_plural = "processes"
        # Ids are unique per class: UserSession 7 and Room 7 are two processes.
        # This constraint is the arbiter of a start race.
        constraints = [models.UniqueConstraint(fields=["label", "process_id"], name="processhub_unique_id")]
        indexes = [models.Index(fields=["status", "node"], name="processhub_status_node")]
        # One per admin action, so a support role can look without being able to act.
        permissions = [
            ("stop_process", "Can stop processes"),
            ("restart_process", "Can restart processes"),
            ("move_process", "Can move processes to another node"),
            ("view_process_arguments", "Can see start arguments and handoff state"),
            ("view_metrics", "Can read the Prometheus metrics"),
        ]

    def __str__(self) -> str:
        return self.process_id


class BulkStatus(models.TextChoices):
    RUNNING = "running", "running"
    DONE = "done", "done"
    FAILED = "failed", "failed"


class BulkOperation(models.Model):
    """An admin action on many rows, worked off in the background by the web process's hub runtime.

    The request that starts it returns at once; the runtime writes the counts
    here as items finish, and the admin's progress page reads them.
    """

    kind = models.CharField(max_length=16, help_text="stop, restart or move.")
    target = models.CharField(max_length=200, blank=True, help_text="The node a move goes to.")
    total = models.IntegerField()
    done = models.IntegerField(default=0)
    skipped = models.IntegerField(default=0)
    failed = models.IntegerField(default=0)
    errors = models.TextField(blank=True, help_text="The first failures, one per line (passwords masked).")
    status = models.CharField(max_length=16, choices=BulkStatus.choices, default=BulkStatus.RUNNING)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} of {self.total} ({self.status})"

    @property
    def finished(self) -> int:
        return self.done + self.skipped + self.failed
