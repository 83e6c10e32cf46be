"""Inserts a batch of VASLogs with a few multi-row INSERTs of prepared rows.

bulk_create builds a model instance and runs every field's conversion per
row; this writer does the same conversions once per column, about five times
cheaper. It matters because the writer thread shares the GIL with the event
loop serving requests.

No record a client can shape may stop the others from being written:
- each row is made storable first: NUL characters (which PostgreSQL refuses
  in text and in jsonb strings and keys) become U+FFFD, over-long strings are
  cut to their column's max_length, and the row's `error` says what changed;
- if the batch still fails for its data, rows are written one by one, and a
  row that fails on its own is stored as a minimal VASLog (id, timestamp,
  status code and an error saying the trace could not be stored in full).
Only the database being unavailable fails the batch (for the recorder to
retry it later); ON CONFLICT DO NOTHING makes such a retry harmless.
"""
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial

import orjson
from django.db import DatabaseError, DataError, IntegrityError, connection, models, transaction

from .models import VASLog

NUL = "\x00"
NUL_IN_JSON = "\\u0000"  # how a NUL character reads in JSON text
REPLACEMENT = "\ufffd"
# SQLSTATE classes a row's own data causes: data exception, integrity violation, program limit.
RECORD_SQLSTATES = ("22", "23", "54")


@dataclass
class Outcome:
    written: int = 0
    changed: int = 0  # stored with NULs replaced or fields cut (and said so in `error`)
    minimal: int = 0  # stored as a minimal VASLog
    lost: int = 0  # could not be stored at all


@dataclass(frozen=True)
class Column:
    name: str
    default: object
    kind: str  # "text", "json" or "other"
    limit: int | None  # max_length of a CharField
    convert: object  # to the database's form, or None


def _adapt_decimal(ops, max_digits, decimal_places, value):
    return ops.adapt_decimalfield_value(value, max_digits, decimal_places)


def _columns() -> list[Column]:
    ops = connection.ops
    columns = []
    for f in VASLog._meta.concrete_fields:
        kind, convert = "other", None
        if isinstance(f, models.JSONField):
            kind = "json"
        elif isinstance(f, (models.CharField, models.TextField)):
            kind = "text"
        elif isinstance(f, models.DateTimeField):
            convert = ops.adapt_datetimefield_value
        elif isinstance(f, models.DecimalField):
            convert = partial(_adapt_decimal, ops, f.max_digits, f.decimal_places)
        columns.append(Column(f.name, f.get_default(), kind, getattr(f, "max_length", None), convert))
    return columns


def _without_nul(value):
    if isinstance(value, str):
        return value.replace(NUL, REPLACEMENT)
    if isinstance(value, dict):
        return {_without_nul(k) if isinstance(k, str) else k: _without_nul(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nul(v) for v in value]
    return value


def _text(value: str, column: Column, notes: list[str]) -> str:
    if NUL in value:
        value = value.replace(NUL, REPLACEMENT)
        notes.append(f"NUL characters in {column.name} replaced")
    if column.limit and len(value) > column.limit:
        notes.append(f"{column.name} cut to {column.limit} of {len(value)} characters")
        value = value[:column.limit]
    return value


def _json(value, column: Column, notes: list[str]) -> str:
    text = orjson.dumps(value, default=str).decode()
    if NUL_IN_JSON in text:  # a cheap scan; the walk runs only when it finds one
        clean = orjson.dumps(_without_nul(value), default=str).decode()
        if clean != text:
            notes.append(f"NUL characters in {column.name} replaced")
            text = clean
    return text


def _row(record: dict, columns: list[Column]) -> tuple[list, bool]:
    """The record as a row the database accepts; True when something had to change."""
    row, notes = [], []
    for column in columns:
        value = record.get(column.name, column.default)
        if value is None:
            pass
        elif column.kind == "text" and isinstance(value, str):
            value = _text(value, column, notes)
        elif column.kind == "json":
            value = _json(value, column, notes)
        elif column.convert is not None:
            value = column.convert(value)
        row.append(value)
    if notes:
        at = next(i for i, c in enumerate(columns) if c.name == "error")
        said = f"[trace stored with changes: {'; '.join(notes)}]"
        row[at] = f"{row[at]} {said}" if row[at] else said
    return row, bool(notes)


def _minimal_row(record: dict, columns: list[Column], exc: BaseException) -> list:
    stamp = record.get("timestamp")
    status = record.get("status_code")
    minimal = {
        "id": str(record.get("id") or "")[:32],
        "timestamp": stamp if isinstance(stamp, datetime) else datetime.now(timezone.utc),
        "status_code": status if isinstance(status, int) and 0 <= status <= 32767 else 0,
        "error": f"The trace could not be stored in full ({type(exc).__name__}); only its id, "
                 "timestamp and status code were kept.",
    }
    return _row(minimal, columns)[0]


def is_record_error(exc: BaseException) -> bool:
    """True when the data of a row caused it (as opposed to the database being unavailable)."""
    if not isinstance(exc, DatabaseError):
        return True  # a value Python could not convert
    if isinstance(exc, (DataError, IntegrityError)):
        return True
    return str(getattr(exc.__cause__, "sqlstate", "") or "")[:2] in RECORD_SQLSTATES


def _sql(columns: list[Column], rows: int = 1) -> str:
    json_cast = "::jsonb" if connection.vendor == "postgresql" else ""
    placeholders = "(" + ", ".join(f"%s{json_cast}" if c.kind == "json" else "%s" for c in columns) + ")"
    quote = connection.ops.quote_name
    return (f"INSERT INTO {quote(VASLog._meta.db_table)} ({', '.join(quote(c.name) for c in columns)}) "
            f"VALUES {', '.join([placeholders] * rows)} ON CONFLICT DO NOTHING")


def _insert_many(columns: list[Column], rows: list[list]):
    """Many rows per statement: executemany steps the database once per row, and each step
    gives up the GIL and waits to get it back from the busy event loop (the writer then fell
    behind at about 1,000 requests/s and its backlog grew without end)."""
    per = max(1, min(len(rows), (connection.features.max_query_params or 65535) // len(columns)))
    with transaction.atomic(), connection.cursor() as cursor:  # one commit, not one per row
        for start in range(0, len(rows), per):
            chunk = rows[start:start + per]
            cursor.execute(_sql(columns, len(chunk)), [value for row in chunk for value in row])


def write_batch(records: list[dict]) -> Outcome:
    """Stores every record it can; raises only when the database is unavailable."""
    columns = _columns()
    sql = _sql(columns)
    outcome = Outcome()
    rows = []
    for record in records:
        try:
            row, changed = _row(record, columns)
            outcome.changed += changed
        except Exception as exc:  # a value no column can take: keep what is certain
            row = _minimal_row(record, columns, exc)
            outcome.minimal += 1
        rows.append(row)
    try:
        _insert_many(columns, rows)
        outcome.written = len(rows)
        return outcome
    except Exception as exc:
        if not is_record_error(exc):
            raise
    for record, row in zip(records, rows):  # some row is refused: find it, keep the others
        try:
            _insert(sql, row)
        except Exception as exc:
            if not is_record_error(exc):
                raise
            try:
                _insert(sql, _minimal_row(record, columns, exc))
            except Exception as minimal_exc:
                if not is_record_error(minimal_exc):
                    raise
                outcome.lost += 1
                continue
            outcome.minimal += 1
        outcome.written += 1
    return outcome


def _insert(sql: str, row: list):
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, row)
