"""``manage.py runhub``: run one hub node until SIGTERM/SIGINT (then drain)."""
from django.core.management.base import BaseCommand, CommandError

from processhub.conf import hub_settings
from processhub.node.runner import NodeRunner


class Command(BaseCommand):
    help = "Run a processhub node: host HordeProcess activations until SIGTERM/SIGINT, then hand them off."
    runner_class = NodeRunner

    def add_arguments(self, parser):
        parser.add_argument("--node", default=None, help="Node name (default: PROCESSHUB NODE_NAME or hostname-pid).")

    def handle(self, *args, node=None, **options):
        if hub_settings().transport == "memory":
            raise CommandError(
                "runhub needs a shared transport: set REDIS_URL (and DATABASE_URL to PostgreSQL). "
                "Without them the hub runs embedded in the web server process."
            )
        self.runner_class(name=node).run()
