import time

from django.core.management.base import BaseCommand, CommandError

from tasks.conf import mq_settings
from tasks.models import FINAL_STATUSES
from tasks.retention import cutoff_for, prune


class Command(BaseCommand):
    help = (
        "Delete finished task history (never READY or RUNNING rows), receipts and published messages older "
        "than a number of days, in small batches that never block the workers."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            type=float,
            metavar="DAYS",
            help="Age in days (by finished_at; received_at/published_at for messages). Default: MQ_HISTORY_RETENTION_DAYS.",
        )
        parser.add_argument(
            "--status",
            action="append",
            choices=[str(status) for status in FINAL_STATUSES],
            metavar="S",
            help=f"Only task rows of this final status (repeatable; default all of {', '.join(FINAL_STATUSES)}).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")
        parser.add_argument("--batch-size", type=int, metavar="N", help="Rows per DELETE (default MQ_PRUNE_BATCH_SIZE).")

    def handle(self, *args, older_than, status, dry_run, batch_size, **options):
        days = older_than if older_than is not None else mq_settings.MQ_HISTORY_RETENTION_DAYS
        if days is None:
            raise CommandError("Give --older-than DAYS (MQ_HISTORY_RETENTION_DAYS is not set).")
        if days < 0:
            raise CommandError("--older-than must be 0 or more days.")
        if batch_size is not None and batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        cutoff = cutoff_for(days)
        started = time.monotonic()
        report = prune(cutoff, statuses=status or FINAL_STATUSES, dry_run=dry_run, batch_size=batch_size)
        seconds = time.monotonic() - started
        verb = "would delete" if dry_run else "deleted"
        for label, rows in report.deleted.items():
            self.stdout.write(f"{label}: {verb} {rows}")
        if options["verbosity"] > 1:
            self.stderr.write(f"cutoff {cutoff.isoformat()}, {seconds:.2f} s")
