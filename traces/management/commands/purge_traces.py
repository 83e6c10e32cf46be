"""manage.py purge_traces: deletes VAS logs past the retention period, in bounded batches."""
from django.conf import settings
from django.core.management.base import BaseCommand

from traces.retention import purge


class Command(BaseCommand):
    help = "Delete VAS logs older than SMARTFLOW_TRACE_RETENTION_DAYS (or --days), in batches."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=None,
                            help=f"keep this many days (default: SMARTFLOW_TRACE_RETENTION_DAYS, "
                                 f"now {settings.SMARTFLOW_TRACE_RETENTION_DAYS}); 0 keeps everything")
        parser.add_argument("--batch-size", type=int, default=None,
                            help="rows per delete statement (default: SMARTFLOW_TRACE_RETENTION_BATCH)")

    def handle(self, *args, days=None, batch_size=None, **options):
        deleted = purge(days=days, batch_size=batch_size)
        self.stdout.write(f"Deleted {deleted} VAS log(s).")
