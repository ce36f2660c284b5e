"""``manage.py hubdrain NODE`` / ``hubdrain --undo NODE``: drain a node in place, or let it take work again."""
from django.core.management.base import BaseCommand, CommandError

from processhub import hub
from processhub.exceptions import ProcessHubError


class Command(BaseCommand):
    help = ("Drain a node in place (it takes no new processes and moves its processes to the other nodes, but "
            "keeps running), or with --undo let a drained node take new processes again.")

    def add_arguments(self, parser):
        parser.add_argument("node", help="Node name (or incarnation id).")
        parser.add_argument("--undo", action="store_true", help="Undrain: the node takes new processes again.")

    def handle(self, *args, node: str, undo: bool = False, **options):
        try:
            if undo:
                hub.undrain(node)
                self.stdout.write(f"{node} takes new processes again.")
            else:
                moving = hub.drain(node)
                self.stdout.write(f"{node} is draining: {moving} processes start to move away.")
        except ProcessHubError as exc:
            raise CommandError(f"{type(exc).__name__}: {exc}") from exc
