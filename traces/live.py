"""Live trace rows: each written batch is pushed through the channel layer to dashboards.

The recorder calls ``broadcast(batch)`` in its writer thread after a batch is
in the database. The summaries go to the ``traces`` group; every connected
dashboard (in this process, or any process when the Redis layer is used)
gets them from its consumer (traces/consumers.py).
"""
import asyncio
import logging
import os
import threading
from concurrent.futures import Future
from datetime import datetime

from channels.layers import InMemoryChannelLayer, get_channel_layer

from .queries import SUMMARY_FIELDS, summary

log = logging.getLogger(__name__)
GROUP = "traces"
MAX_PUSH = 100  # newest rows per batch; a busy gateway's dashboard needs no more per flush
PUSH_TIMEOUT_S = 5.0  # a push the layer has not taken by then is dropped (and the next one may go)

# The event loop of the consumers of this process (set when one connects).
_loop: asyncio.AbstractEventLoop | None = None
_consumers = 0
# One push at a time, never waited for by the writer thread: a Redis that hangs holds one push,
# not the writer, and not a pile of pushes. Without local consumers, pushes run on a loop of their own.
_push: Future | None = None
_push_loop: asyncio.AbstractEventLoop | None = None  # the loop the last push runs on
_own_loop: asyncio.AbstractEventLoop | None = None
_own_thread: threading.Thread | None = None
_own_lock = threading.Lock()


def _pushing_loop() -> asyncio.AbstractEventLoop:
    """The pushes' own event loop, in a thread of its own, started once. The Redis layer keeps its
    connections per loop: a new loop per push (async_to_sync) connected anew for every batch, 4.95 ms
    of CPU a push (1.1 ms on one loop), five pushes a second under load."""
    global _own_loop, _own_thread
    with _own_lock:
        if _own_thread is None or not _own_thread.is_alive():  # (started again should it ever stop)
            _own_loop = asyncio.new_event_loop()
            _own_thread = threading.Thread(target=_own_loop.run_forever, name="live-traces", daemon=True)
            _own_thread.start()
        return _own_loop


def _forget_loop():
    """A forked child has none of its parent's threads and runs none of its loops."""
    global _own_loop, _own_thread, _own_lock, _push, _push_loop, _loop, _consumers
    _own_loop = _own_thread = _push = _push_loop = _loop = None
    _own_lock, _consumers = threading.Lock(), 0


os.register_at_fork(after_in_child=_forget_loop)


def consumer_joined(loop: asyncio.AbstractEventLoop):
    global _loop, _consumers
    _loop, _consumers = loop, _consumers + 1


def consumer_left():
    global _consumers
    _consumers = max(_consumers - 1, 0)


# What a record may lack (a request refused early) gets the VASLog's defaults.
_DEFAULTS = {"key_prefix": "", "team": "", "endpoint": "chat.completions", "client_model": "", "provider": "",
             "upstream_model": "", "status_code": 0, "stream": False, "latency_ms": 0.0, "overhead_ms": 0.0,
             "tokens_input": 0, "tokens_output": 0, "cost_usd": 0, "unpriced": False, "cache": "bypass", "compliance": "pass",
             "error": ""}


def message(batch: list[dict]) -> dict:
    """The channel-layer event for a written batch: summaries of its newest rows."""
    newest = sorted(batch, key=lambda r: (r["timestamp"], r["id"]), reverse=True)[:MAX_PUSH]
    rows = []
    for record in newest:
        if not isinstance(record.get("timestamp"), datetime):
            continue
        row = {**_DEFAULTS, **{k: record[k] for k in SUMMARY_FIELDS if record.get(k) is not None}}
        rows.append(summary(row))
    return {"type": "traces.batch", "rows": rows}


def broadcast(batch: list[dict]):
    """Recorder listener (runs in the writer thread, never on the request path)."""
    global _push, _push_loop
    layer = get_channel_layer()
    if layer is None or not batch:
        return
    in_memory = isinstance(layer, InMemoryChannelLayer)
    if in_memory and (_consumers == 0 or _loop is None or _loop.is_closed()):
        return  # nobody in this process is listening, and no other process can be
    payload = message(batch)
    if not payload["rows"]:
        return
    if _push is not None and not _push.done() and _push_loop.is_running():
        return  # the last push is still out (a slow layer): live rows are best effort, traces are not
    # Handed to the consumers' loop (or the pushes' own) without waiting: the writer thread moves on.
    loop = _loop if _loop is not None and not _loop.is_closed() else _pushing_loop()
    _push, _push_loop = asyncio.run_coroutine_threadsafe(_send(layer, payload), loop), loop
    _push.add_done_callback(_log_failure)


async def _send(layer, payload: dict):
    await asyncio.wait_for(layer.group_send(GROUP, payload), PUSH_TIMEOUT_S)


def _log_failure(future):
    if not future.cancelled() and future.exception() is not None:
        log.warning("live traces: channel layer unavailable, push dropped: %r", future.exception())
