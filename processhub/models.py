"""Database models: the registry's source of truth (DESIGN "Truth: the database")."""
from __future__ import annotations

from django.db import models


class NodeStatus(models.TextChoices):
    UP = "up", "up"
    DRAINING = "draining", "draining"
    DOWN = "down", "down"


class ProcessStatus(models.TextChoices):
    # Desired to run: on ``node`` at ``epoch``, or waiting for a node when node is NULL.
    RUNNING = "running", "running"
    # Exited normally or stopped on request: not restarted.
    STOPPED = "stopped", "stopped"
    # Crashed more than max_restarts in max_seconds, or init failed: not restarted.
    FAILED = "failed", "failed"


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

    class Meta:
        ordering = ["name", "-started_at"]

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

    class Meta:
        verbose_name_plural = "processes"
        # Ids are unique per class: UserSession 7 and Room 7 are two processes.
        # This constraint is the arbiter of a start race.
        constraints = [models.UniqueConstraint(fields=["label", "process_id"], name="processhub_unique_id")]
        indexes = [models.Index(fields=["status", "node"], name="processhub_status_node")]

    def __str__(self) -> str:
        return self.process_id
