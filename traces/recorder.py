"""Writes VASLogs in batches off the request path.

Requests append a finished trace to an in-memory backlog; a background task
bulk-inserts it every SMARTFLOW_TRACE_FLUSH_SECONDS (or sooner when a batch
fills). The lifespan starts that task; under a server without one (daphne,
runserver) the first request does. Shutdown (and process exit) flushes what
is left, so a graceful stop loses nothing.

While the database is unavailable batches go back to the backlog and are
retried with a growing pause; the backlog is bounded by count and by an
estimate of its bytes (taken while the writer is behind), beyond which the
oldest traces are dropped (counted).
"""
import asyncio
import atexit
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import connection

from .writer import write_batch

log = logging.getLogger(__name__)
MAX_RETRY_PAUSE = 5.0  # seconds between attempts while the database stays unavailable
RECORD_OVERHEAD = 512  # bytes counted for a record's fixed fields
CONNECTION_S = 60.0  # the writer's database connection is renewed this often (and after a failure)


def estimate_bytes(value) -> int:
    """Roughly the bytes a JSON-like value holds: its strings' lengths plus a little per node.

    One pass over the nodes (never over the characters, and no JSON encoding): a
    base64 image costs as much to measure as a word.
    """
    size, stack = 0, [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            size += len(item)
        elif kind is dict:
            size += 16 * len(item)
            stack.extend(item.values())
        elif kind is list:
            size += 8 * len(item)
            stack.extend(item)
        else:
            size += 8
    return size


def record_bytes(record: dict) -> int:
    return (RECORD_OVERHEAD + estimate_bytes([record.get("prompt"), record.get("response")])
            + len(record.get("error") or "") + len(record.get("team") or "")
            + len(record.get("client_model") or "") + len(record.get("upstream_model") or ""))


class Backlog:
    """Records waiting to be written, oldest first, with the bytes they are estimated to hold."""

    def __init__(self):
        self._items: deque[tuple[dict, int]] = deque()
        self.bytes = 0

    def __len__(self):
        return len(self._items)

    def __iter__(self):
        return (record for record, _ in self._items)

    def append(self, record: dict, size: int):
        self._items.append((record, size))
        self.bytes += size

    def take(self, count: int) -> list[tuple[dict, int]]:
        items = [self._items.popleft() for _ in range(min(count, len(self._items)))]
        self.bytes -= sum(size for _, size in items)
        return items

    def put_back(self, items: list[tuple[dict, int]]):
        self._items.extendleft(reversed(items))
        self.bytes += sum(size for _, size in items)

    def drop_oldest(self, max_count: int, max_bytes: int) -> int:
        dropped = 0
        while self._items and (len(self._items) > max_count or self.bytes > max_bytes):
            self.bytes -= self._items.popleft()[1]
            dropped += 1
        return dropped

    def clear(self):
        self._items.clear()
        self.bytes = 0


class Recorder:
    def __init__(self):
        self.pending = Backlog()
        self.writing: list[dict] = []  # the batch being written (still found by id)
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # one writer at a time
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._stopped = False  # by the lifespan's shutdown: a late request does not start it again
        self._retry_at = 0.0
        self._retry_pause = 0.0
        # One thread writes, so from one database connection, kept between batches (a new SQLite
        # connection runs three PRAGMAs, a PostgreSQL one a handshake). On the loop's shared executor
        # each of its threads wrote in turn, and each one's SQLite connection cached up to 2 MiB of
        # VASLog pages of its own: RSS kept growing over minutes of load (bench/run.sh soak).
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="trace-writer")
        self._connected_at = 0.0
        self.write_failures = 0  # write attempts that failed (the batch is retried)
        self.dropped = 0  # traces lost: backlog over its bounds, or not storable at all
        self.stored_minimal = 0  # traces that could only be stored as a minimal VASLog
        self.last_failure = ""  # the exception class of the last failed attempt, "" once one succeeds
        self.listeners: list = []  # callables given each written batch (live dashboard)
        # Callables given each record as it is added, on the request path: they must only
        # do cheap in-memory work (no I/O) and keep what they need, not the record.
        self.observers: list = []
        # Callables given this recorder after each write attempt, in the writer's thread (metrics).
        self.reporters: list = []

    def add(self, record: dict):
        if (self._task is None or self._task.done()) and not self._stopped:
            self._start_on_this_loop()
        for observe in self.observers:
            try:
                observe(record)
            except Exception:
                log.exception("trace observer failed")
        batch_size = settings.SMARTFLOW_TRACE_BATCH_SIZE
        # Sizes matter only while the writer is behind (a batch or more waiting): measured then,
        # a flat guess before, so a writer that keeps up costs the request path nothing here.
        behind = len(self.pending) >= batch_size
        size = record_bytes(record) if behind else RECORD_OVERHEAD
        with self._lock:
            self.pending.append(record, size)
            waiting = len(self.pending)
            if waiting > settings.SMARTFLOW_TRACE_BACKLOG_MAX or (
                    behind and self.pending.bytes > settings.SMARTFLOW_TRACE_BACKLOG_BYTES):
                self._drop_oldest()
        if waiting == batch_size and self._wake is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)  # a full batch: write it now

    def _drop_oldest(self):
        dropped = self.pending.drop_oldest(settings.SMARTFLOW_TRACE_BACKLOG_MAX,
                                           settings.SMARTFLOW_TRACE_BACKLOG_BYTES)
        if dropped:
            if not self.dropped:
                log.error("trace backlog over its bounds; oldest traces dropped")
            self.dropped += dropped

    def _start_on_this_loop(self):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop here (a script, a test): flush_sync or the exit writes
        self.start()

    def find(self, log_id: str) -> dict | None:
        """A trace not yet in the database (so a fresh request id already resolves)."""
        with self._lock:
            for record in (*self.pending, *self.writing):
                if record["id"] == log_id:
                    return record
        return None

    def status(self) -> dict:
        return {"running": self._task is not None and not self._task.done(), "backlog": len(self.pending),
                "backlog_bytes": self.pending.bytes, "write_failures": self.write_failures,
                "dropped": self.dropped, "stored_minimal": self.stored_minimal,
                "last_failure": self.last_failure or None}

    def start(self):
        self._stopped = False
        if self._task is None or self._task.done():
            self._loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            self._task = self._loop.create_task(self._run())

    async def stop(self):
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.flush()

    async def _run(self):
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), settings.SMARTFLOW_TRACE_FLUSH_SECONDS)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if self.pending and time.monotonic() >= self._retry_at:
                await self.flush()

    async def flush(self):
        await asyncio.get_running_loop().run_in_executor(self._writer, self.flush_sync)

    def flush_sync(self) -> bool:
        """Writes the whole backlog in batches; False when the database was unavailable."""
        with self._flushing:
            if not self.pending:
                return True  # nothing to write or to report (an idle process, its exit)
            try:
                return self._write_all()
            finally:
                self._report()

    def _write_all(self) -> bool:
        while True:
            with self._lock:
                chunk = self.pending.take(settings.SMARTFLOW_TRACE_BATCH_SIZE)
                self.writing = [record for record, _ in chunk]
            if not chunk:
                return True
            batch = self.writing
            try:
                self._renew_connection()
                outcome = write_batch(batch)
            except Exception as exc:
                self._drop_connection()
                log.warning("writing %d traces failed (%s); will retry", len(batch), type(exc).__name__,
                            exc_info=not self.last_failure)
                with self._lock:
                    self.pending.put_back(chunk)
                    self.writing = []
                    self._drop_oldest()
                    self.write_failures += 1
                    self.last_failure = type(exc).__name__
                self._retry_pause = min(max(self._retry_pause * 2, settings.SMARTFLOW_TRACE_FLUSH_SECONDS),
                                        MAX_RETRY_PAUSE)
                self._retry_at = time.monotonic() + self._retry_pause
                return False
            with self._lock:
                self.writing = []
                self.stored_minimal += outcome.minimal
                self.dropped += outcome.lost
                self.last_failure = ""
            self._retry_pause, self._retry_at = 0.0, 0.0
            if outcome.minimal or outcome.lost:
                log.error("%d traces stored only in part, %d not at all", outcome.minimal, outcome.lost)
            for listener in self.listeners:
                try:
                    listener(batch)
                except Exception:
                    log.exception("trace listener failed")

    def _renew_connection(self):
        if connection.connection is None:
            self._connected_at = time.monotonic()
        elif time.monotonic() - self._connected_at > CONNECTION_S:
            self._drop_connection()
            self._connected_at = time.monotonic()

    @staticmethod
    def _drop_connection():
        if connection.connection is not None and not connection.in_atomic_block:  # (a test's transaction)
            try:
                connection.close()
            except Exception:
                pass

    def _report(self):
        for report in self.reporters:
            try:
                report(self)
            except Exception:
                log.exception("trace reporter failed")


recorder = Recorder()


@atexit.register
def _flush_at_exit():
    try:
        recorder.flush_sync()
    except Exception:
        log.exception("final trace flush failed")
