"""Writes VASLogs in batches off the request path.

Requests append a finished trace to an in-memory list; a background task
bulk-inserts it every SMARTFLOW_TRACE_FLUSH_SECONDS (or sooner when a batch
fills). Shutdown flushes what is left, so a graceful stop loses nothing.
"""
import asyncio
import atexit
import logging
import threading

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from .writer import write_batch

log = logging.getLogger(__name__)
MAX_PENDING = 200_000  # beyond this the database is down for long; drop oldest rather than exhaust memory


class Recorder:
    def __init__(self):
        self.pending: list[dict] = []
        self.writing: list[dict] = []
        self._lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.listeners: list = []  # callables given each written batch (live dashboard, metrics)
        # Callables given each record as it is added, on the request path: they must only
        # do cheap in-memory work (no I/O); the metrics counters use this.
        self.observers: list = []

    def add(self, record: dict):
        for observe in self.observers:
            try:
                observe(record)
            except Exception:
                log.exception("trace observer failed")
        with self._lock:
            self.pending.append(record)
            if len(self.pending) > MAX_PENDING:
                del self.pending[: len(self.pending) - MAX_PENDING]
                log.error("trace backlog over %d; oldest traces dropped", MAX_PENDING)
            full = len(self.pending) >= settings.SMARTFLOW_TRACE_BATCH_SIZE
        if full and self._wake is not None:
            self._wake.set()

    def find(self, log_id: str) -> dict | None:
        """A trace not yet in the database (so a fresh request id already resolves)."""
        with self._lock:
            for record in (*self.pending, *self.writing):
                if record["id"] == log_id:
                    return record
        return None

    def start(self):
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self):
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await sync_to_async(self.flush_sync, thread_sensitive=False)()

    async def _run(self):
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), settings.SMARTFLOW_TRACE_FLUSH_SECONDS)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if self.pending:
                await sync_to_async(self.flush_sync, thread_sensitive=False)()

    async def flush(self):
        await sync_to_async(self.flush_sync, thread_sensitive=False)()

    def flush_sync(self):
        with self._lock:
            if not self.pending:
                return
            batch, self.pending = self.pending, []
            self.writing.extend(batch)
        try:
            close_old_connections()
            write_batch(batch)
        except Exception:
            log.exception("writing %d traces failed; will retry", len(batch))
            with self._lock:
                self.pending[:0] = batch
                self.writing = [r for r in self.writing if r not in batch]
            return
        with self._lock:
            ids = {r["id"] for r in batch}
            self.writing = [r for r in self.writing if r["id"] not in ids]
        for listener in self.listeners:
            try:
                listener(batch)
            except Exception:
                log.exception("trace listener failed")


recorder = Recorder()


@atexit.register
def _flush_at_exit():
    try:
        recorder.flush_sync()
    except Exception:
        log.exception("final trace flush failed")
