"""``manage.py hubrebalance``: move processes to the nodes placement names for them now (with progress)."""
import time

from django.core.management.base import BaseCommand

from processhub import hub


class Command(BaseCommand):
    help = ("Move every process that placement would now put on another node (after a rolling deploy, a node "
            "that joined): with handoff, at most REBALANCE_RATE moves per second. --dry-run prints the moves.")

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Print what would move, move nothing.")
        parser.add_argument("--wait", type=float, default=300.0, help="Seconds to follow the moves (0: do not).")

    def handle(self, *args, dry_run=False, wait=300.0, **options):
        plan = hub.rebalance_plan()
        if dry_run or not plan:
            for ref, to in plan:
                self.stdout.write(f"{ref.label} {ref.process_id}: {ref.node} -> {to}")
            self.stdout.write(f"{len(plan)} processes would move." if dry_run else "Nothing to move.")
            return
        asked = hub.rebalance()
        self.stdout.write(f"{len(plan)} processes to move; {asked} nodes rebalancing.")
        deadline = time.monotonic() + wait
        left = len(plan)
        while left and time.monotonic() < deadline:
            time.sleep(1.0)
            left = len(hub.rebalance_plan())
            self.stdout.write(f"  {len(plan) - left} of {len(plan)} moved ({left} to go)")
        self.stdout.write("Rebalanced." if not left else f"{left} processes still to move; they go on moving.")
