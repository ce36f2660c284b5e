"""Database models of the demo: a chat room's messages, written by the room's process under its fence."""
from django.db import models


class RoomMessage(models.Model):
    """One message of a chat room; ``ChatRoom`` writes it with ``fenced()``, so a zombie activation cannot."""

    room = models.CharField(max_length=255)
    # Chosen by the browser tab that sent it, so a retried post after a failover is stored once.
    msg_id = models.CharField(max_length=64)
    user = models.CharField(max_length=150)
    text = models.TextField()
    # Where and under which epoch the room ran when it took the message (the demo shows moves).
    node = models.CharField(max_length=200)
    epoch = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["room", "msg_id"], name="demo_room_message_once")]
        indexes = [models.Index(fields=["room", "-id"], name="demo_room_latest")]

    def __str__(self) -> str:
        return f"{self.room}: {self.text[:40]}"

    def as_dict(self) -> dict:
        return {"id": self.msg_id, "user": self.user, "text": self.text, "node": self.node, "epoch": self.epoch,
                "at": self.created_at.isoformat(timespec="seconds")}
