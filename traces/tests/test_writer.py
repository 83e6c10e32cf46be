"""The trace writer stores what a client can shape, on SQLite and on PostgreSQL alike.

PostgreSQL refuses NUL characters in text and in jsonb and strings longer than
a varchar's length; SQLite takes both, so the writer makes the same changes
on both and the tests hold for either.
"""
import asyncio
import threading
from datetime import datetime, timezone
from functools import partial

import pytest
from django.db import OperationalError

from traces import recorder as recorder_module
from traces.models import VASLog
from traces.recorder import Recorder
from traces.trace import Trace

pytestmark = pytest.mark.django_db(transaction=True)


def record(**fields) -> dict:
    trace = Trace("chat.completions")
    trace.set(**{"status_code": 200, "provider": "openai", "client_model": "gpt-4.1", "upstream_model": "gpt-4.1",
                 "prompt": [{"role": "user", "content": "hello"}], **fields})
    trace.stage("upstream", upstream=True)
    return trace.record()


def stored(rec: dict) -> VASLog:
    return VASLog.objects.get(pk=rec["id"])


def test_nul_characters_anywhere_are_replaced_and_the_record_says_so():
    rec = record(prompt=[{"role": "user", "content": "page 1\x00page 2", "na\x00me": "x"}],
                 response={"choices": [{"message": {"content": "echo \x00"}}]},
                 error="upstream said \x00 bad", team="t\x00eam")
    rec_ok = record()
    writer = Recorder()
    writer.add(rec)
    writer.add(rec_ok)
    assert writer.flush_sync() is True
    log = stored(rec)
    assert log.prompt == [{"role": "user", "content": "page 1\ufffdpage 2", "na\ufffdme": "x"}]
    assert log.response == {"choices": [{"message": {"content": "echo \ufffd"}}]}
    assert log.team == "t\ufffdeam"
    assert log.error.startswith("upstream said \ufffd bad [trace stored with changes: ")
    for name in ("team", "prompt", "response", "error"):
        assert f"NUL characters in {name} replaced" in log.error
    assert stored(rec_ok).error == ""  # the clean one is untouched
    assert writer.write_failures == writer.dropped == writer.stored_minimal == 0


def test_over_long_fields_are_cut_to_their_column_and_the_record_says_so():
    rec = record(team="t" * 10_000, upstream_model="m" * 10_000, client_model="c" * 300, key_prefix="k" * 50)
    writer = Recorder()
    writer.add(rec)
    assert writer.flush_sync()
    log = stored(rec)
    assert (log.team, log.upstream_model, log.client_model, log.key_prefix) == ("t" * 200, "m" * 200, "c" * 200,
                                                                             "k" * 16)
    assert "team cut to 200 of 10000 characters" in log.error
    assert "upstream_model cut to 200 of 10000 characters" in log.error
    assert "key_prefix cut to 16 of 50 characters" in log.error


def test_a_record_the_database_refuses_still_leaves_a_minimal_vaslog_and_blocks_nobody():
    good = [record(prompt=[{"role": "user", "content": f"m{i}"}]) for i in range(99)]
    refused = record(tokens_input=-5, status_code=502)  # breaks the column's CHECK on both databases
    unencodable = record(response={"text": "lone \ud800 surrogate"})  # no JSON encoder takes it
    writer = Recorder()
    for rec in good[:50] + [refused, unencodable] + good[50:]:
        writer.add(rec)
    assert writer.flush_sync()
    assert VASLog.objects.count() == 101
    for rec in (refused, unencodable):
        log = stored(rec)
        assert log.error.startswith("The trace could not be stored in full")
        assert log.timestamp == rec["timestamp"] and log.status_code == rec["status_code"]
        assert log.prompt == [] and log.tokens_input == 0
    assert all(stored(rec).prompt == rec["prompt"] for rec in good)
    assert writer.stored_minimal == 2 and writer.write_failures == 0 and not writer.pending
    # The next batch is written as usual: nothing was left behind to retry.
    later = record()
    writer.add(later)
    assert writer.flush_sync() and stored(later)


def test_an_unavailable_database_keeps_the_backlog_and_a_later_attempt_writes_it(monkeypatch):
    writer = Recorder()
    recs = [record() for _ in range(30)]
    for rec in recs:
        writer.add(rec)

    def down(batch):
        raise OperationalError("connection refused")

    monkeypatch.setattr(recorder_module, "write_batch", down)
    assert writer.flush_sync() is False
    status = writer.status()
    assert status["backlog"] == 30 and status["backlog_bytes"] > 0 and status["write_failures"] == 1
    assert status["last_failure"] == "OperationalError"
    assert [r["id"] for r in writer.pending] == [r["id"] for r in recs]  # order kept
    assert writer.find(recs[7]["id"]) is recs[7]
    monkeypatch.undo()
    assert writer.flush_sync() is True
    assert VASLog.objects.filter(pk__in=[r["id"] for r in recs]).count() == 30
    assert writer.status()["backlog"] == 0 and writer.status()["last_failure"] is None


def test_the_backlog_is_bounded_by_bytes_as_well_as_by_count(settings):
    settings.SMARTFLOW_TRACE_BACKLOG_BYTES = 1_000_000
    settings.SMARTFLOW_TRACE_BACKLOG_MAX = 1_000
    settings.SMARTFLOW_TRACE_BATCH_SIZE = 1  # the writer is behind from the first trace on
    writer = Recorder()
    big = [record(prompt=[{"role": "user", "content": "x" * 100_000}]) for _ in range(25)]
    for rec in big:
        writer.add(rec)
    assert writer.pending.bytes <= 1_000_000 and len(writer.pending) == 9
    assert writer.dropped == 16
    assert [r["id"] for r in writer.pending] == [r["id"] for r in big[-9:]]  # the oldest went
    for _ in range(1_500):
        writer.add(record())
    assert len(writer.pending) == 1_000 and writer.dropped == 16 + 9 + 500
    writer.pending.clear()
    assert writer.pending.bytes == 0


def test_the_metrics_observer_keeps_a_few_values_not_the_record():
    from metrics.store import CounterStore

    store = CounterStore()
    writer = Recorder()
    writer.observers.append(store.observe)
    rec = record(prompt=[{"role": "user", "content": "p" * 1_000_000}], tokens_input=3, upstream_model="u" * 5000)
    writer.add(rec)
    (noted,) = store._noted
    assert isinstance(noted, tuple) and len(noted) == 10  # the counters' inputs: unpriced, then the failover steps
    assert all(not isinstance(v, (dict, list)) and (not isinstance(v, str) or len(v) <= 200) for v in noted)


def test_the_minimal_record_keeps_what_is_certain_even_from_nonsense():
    writer = Recorder()
    rec = {"id": "x" * 40, "timestamp": "not a time", "status_code": 10**9, "prompt": object()}
    writer.add(rec)
    assert writer.flush_sync()
    log = VASLog.objects.get(pk="x" * 32)
    assert log.status_code == 0 and log.error.startswith("The trace could not be stored in full")
    assert abs((log.timestamp - datetime.now(timezone.utc)).total_seconds()) < 60


def test_the_writer_thread_keeps_its_connection_between_batches_and_renews_it_after_a_failure(monkeypatch):
    """A connection per flush cost a connect (three PRAGMAs on SQLite, a handshake on PostgreSQL)
    every half second of traffic."""
    from django.db.backends.signals import connection_created

    writer, opened = Recorder(), []
    connection_created.connect(lambda sender, connection, **kw: opened.append(connection), weak=False,
                               dispatch_uid="test-writer-connections")
    try:
        async def flushes(count):
            for _ in range(count):
                writer.add(record())
                await writer.flush()
        asyncio.run(flushes(5))
        assert len(opened) == 1  # five batches, one connection
        real = recorder_module.write_batch

        def down(batch):
            raise OperationalError("server closed the connection unexpectedly")
        monkeypatch.setattr(recorder_module, "write_batch", down)
        asyncio.run(flushes(1))
        monkeypatch.setattr(recorder_module, "write_batch", real)
        writer._retry_at = 0.0
        asyncio.run(flushes(2))
        assert len(opened) == 2  # dropped after the failure, one new one since
        monkeypatch.setattr(recorder_module, "CONNECTION_S", 0.0)
        asyncio.run(flushes(1))
        assert len(opened) == 3  # and renewed when old
        assert VASLog.objects.count() == 9
    finally:
        connection_created.disconnect(dispatch_uid="test-writer-connections")
        from django.db import connection

        writer._writer.submit(lambda: connection.close()).result()  # the writer thread's own, before the test database goes


@pytest.mark.asyncio
async def test_every_batch_is_written_from_one_thread_so_one_connection_caches_the_trace_pages(monkeypatch):
    """Each thread has its own database connection, and each SQLite connection its own page cache of
    up to 2 MiB: batches written from the loop's shared executor, one thread after another, left a
    cache of VASLog pages in every one of its threads, and RSS grew for minutes under load."""
    threads = []
    write_batch = recorder_module.write_batch

    def watched(batch):
        threads.append(threading.get_ident())
        return write_batch(batch)

    monkeypatch.setattr(recorder_module, "write_batch", watched)
    # The shared executor has idle threads, as under load (snapshot reloads, key look-ups).
    ready = threading.Barrier(4)
    await asyncio.gather(*(asyncio.to_thread(ready.wait) for _ in range(4)))
    writer = Recorder()
    records = [record() for _ in range(8)]
    on_writer = partial(asyncio.get_running_loop().run_in_executor, writer._writer)
    try:
        for rec in records:
            writer.add(rec)
            await writer.flush()
            await asyncio.gather(*(asyncio.to_thread(threading.get_ident) for _ in range(4)))
        assert len(threads) == 8 and len(set(threads)) == 1
        assert await on_writer(lambda: VASLog.objects.filter(pk__in=[r["id"] for r in records]).count()) == 8
    finally:  # the writer thread's own connection, before the test database goes (PostgreSQL refuses to drop it)
        from django.db import connection

        await on_writer(lambda: connection.close())
