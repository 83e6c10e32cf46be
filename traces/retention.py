"""Deletes VAS logs older than SMARTFLOW_TRACE_RETENTION_DAYS, a bounded batch at a time."""
import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from .models import VASLog

log = logging.getLogger(__name__)


def purge(days: int | None = None, batch_size: int | None = None, max_batches: int | None = None) -> int:
    """Deletes logs older than `days` (0 or less keeps everything); returns how many went.

    Each round reads at most batch_size ids (oldest first, from the timestamp
    index) and deletes them by primary key, so neither memory nor one
    statement's lock grows with the table.
    """
    days = settings.SMARTFLOW_TRACE_RETENTION_DAYS if days is None else days
    batch_size = batch_size or settings.SMARTFLOW_TRACE_RETENTION_BATCH
    if days <= 0:
        return 0
    cutoff = timezone.now() - timedelta(days=days)
    deleted = rounds = 0
    while max_batches is None or rounds < max_batches:
        ids = list(VASLog.objects.filter(timestamp__lt=cutoff).order_by("timestamp", "id")
                   .values_list("id", flat=True)[:batch_size])
        if not ids:
            break
        VASLog.objects.filter(pk__in=ids).delete()
        deleted += len(ids)
        rounds += 1
    if deleted:
        log.info("retention: deleted %d VAS logs older than %d days", deleted, days)
    return deleted
