"""Live trace rows: each written batch is pushed through the channel layer to dashboards.

The recorder calls ``broadcast(batch)`` in its writer thread after a batch is
in the database. The summaries go to the ``traces`` group; every connected
dashboard (in this process, or any process when the Redis layer is used)
gets them from its consumer (traces/consumers.py).
"""
import asyncio
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer

from .queries import SUMMARY_FIELDS, summary

log = logging.getLogger(__name__)
GROUP = "traces"
MAX_PUSH = 100  # newest rows per batch; a busy gateway's dashboard needs no more per flush

# The event loop of the consumers of this process (set when one connects).
_loop: asyncio.AbstractEventLoop | None = None
_consumers = 0
# One push at a time, never waited for by the writer thread: a Redis that hangs holds one push,
# not the writer, and not a pile of pushes. Without local consumers, pushes run on _pusher.
_pusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="live-traces")
_push: Future | None = None


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
    global _push
    layer = get_channel_layer()
    if layer is None or not batch:
        return
    in_memory = isinstance(layer, InMemoryChannelLayer)
    if in_memory and (_consumers == 0 or _loop is None or _loop.is_closed()):
        return  # nobody in this process is listening, and no other process can be
    payload = message(batch)
    if not payload["rows"]:
        return
    if _push is not None and not _push.done():
        return  # the last push is still out (a slow layer): live rows are best effort, traces are not
    if _loop is not None and not _loop.is_closed():
        # Hand it to the consumers' loop without waiting: the writer thread moves on.
        _push = asyncio.run_coroutine_threadsafe(layer.group_send(GROUP, payload), _loop)
        _push.add_done_callback(_log_failure)
    else:
        _push = _pusher.submit(_push_now, layer, payload)


def _push_now(layer, payload: dict):
    try:
        async_to_sync(layer.group_send)(GROUP, payload)
    except Exception:
        log.warning("live traces: channel layer unavailable", exc_info=True)


def _log_failure(future):
    if not future.cancelled() and future.exception() is not None:
        log.warning("live traces: push failed: %r", future.exception())
