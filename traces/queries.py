"""The VAS log list, shared by the dashboard page and GET /api/vas/logs.

Built to stay fast with millions of rows: only narrow summary columns are
read, filters match the indexes on (team|provider|cache|compliance, timestamp, id), pages
after the first use a keyset cursor on (sort field, id) instead of OFFSET, and
the total is an exact count only up to COUNT_CAP (past that, an estimate).
"""
import base64
import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.db import connection
from django.db.models import F, Q, TextField
from django.db.models.functions import Cast

from proxy.routing import PROVIDER_NAMES

from .models import VASLog

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_OFFSET = 100_000  # deeper than this, page with the cursor
COUNT_CAP = 10_000
SEARCH_COUNT_CAP = 1_000  # a text search scans rows to count them: stop sooner
CACHE_VALUES = ("hit", "miss", "bypass")
COMPLIANCE_VALUES = ("pass", "flagged", "blocked")
# sort key -> ordering expression; "tokens" is input + output.
SORTS = {"timestamp": "timestamp", "latency_ms": "latency_ms", "overhead_ms": "overhead_ms",
         "tokens": "tokens_total", "tokens_input": "tokens_input", "tokens_output": "tokens_output",
         "cost_usd": "cost_usd", "status_code": "status_code", "provider": "provider",
         "model": "client_model", "client_model": "client_model", "cache": "cache"}
SUMMARY_FIELDS = ("id", "timestamp", "key_prefix", "team", "endpoint", "client_model", "provider",
                  "upstream_model", "status_code", "stream", "latency_ms", "overhead_ms", "tokens_input",
                  "tokens_output", "cost_usd", "unpriced", "cache", "compliance", "error")
_ID_LIKE = re.compile(r"^[0-9a-f]{8,32}$")


class BadQuery(ValueError):
    """A list parameter out of range; the message says what is accepted."""


@dataclass
class ListParams:
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    q: str = ""
    provider: str = ""
    cache: str = ""
    compliance: str = ""
    sort: str = "-timestamp"
    cursor: str = ""
    policy: str = ""  # routing policy name
    arm: str = ""  # the weighted arm drawn ("provider/model")

    @classmethod
    def parse(cls, params) -> "ListParams":
        get = params.get

        def integer(name, default, low, high):
            raw = get(name)
            if raw in (None, ""):
                return default
            try:
                value = int(raw)
            except (TypeError, ValueError):
                raise BadQuery(f"'{name}' must be an integer.") from None
            if not low <= value <= high:
                raise BadQuery(f"'{name}' must be between {low} and {high}.")
            return value

        for name in ("q", "cursor", "policy", "arm"):  # PostgreSQL cannot compare text with a NUL in it
            if "\x00" in (get(name) or ""):
                raise BadQuery(f"'{name}' must not contain NUL characters.")
        provider = (get("provider") or "").strip().lower()
        if provider and provider not in PROVIDER_NAMES:
            raise BadQuery(f"Unknown provider '{provider}'. Accepted: {', '.join(PROVIDER_NAMES)}.")
        cache = (get("cache") or "").strip().lower()
        if cache and cache not in CACHE_VALUES:
            raise BadQuery(f"'cache' must be one of {', '.join(CACHE_VALUES)}.")
        compliance = (get("compliance") or "").strip().lower()
        if compliance and compliance not in COMPLIANCE_VALUES:
            raise BadQuery(f"'compliance' must be one of {', '.join(COMPLIANCE_VALUES)}.")
        sort = (get("sort") or "-timestamp").strip()
        if sort.lstrip("-") not in SORTS:
            raise BadQuery(f"Cannot sort by '{sort}'. Accepted: {', '.join(SORTS)} (prefix '-' for descending).")
        return cls(limit=integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
                   offset=integer("offset", 0, 0, MAX_OFFSET),
                   q=(get("q") or "").strip()[:200], provider=provider, cache=cache, compliance=compliance, sort=sort,
                   cursor=(get("cursor") or "").strip(), policy=(get("policy") or "").strip()[:200],
                   arm=(get("arm") or "").strip()[:200])

    @property
    def filtered(self) -> bool:
        return bool(self.q or self.provider or self.cache or self.compliance or self.policy or self.arm)

    def query_string(self, **changes) -> str:
        from urllib.parse import urlencode

        values = {"q": self.q, "provider": self.provider, "cache": self.cache, "compliance": self.compliance, "policy": self.policy, "arm": self.arm,
                  "sort": "" if self.sort == "-timestamp" else self.sort, **changes}
        return urlencode({k: v for k, v in values.items() if v not in ("", None)})


@dataclass
class LogPage:
    rows: list[dict]
    total: int
    total_exact: bool
    next_cursor: str | None
    params: ListParams = field(default_factory=ListParams)

    def as_body(self) -> dict:
        return {"success": True, "data": [summary(r) for r in self.rows], "total": self.total,
                "total_exact": self.total_exact, "next_cursor": self.next_cursor,
                "limit": self.params.limit, "offset": self.params.offset}


def summary(row: dict) -> dict:
    """The list's VASLog summary (the contract's fields, without prompt, response and details)."""
    return {
        "id": row["id"], "timestamp": row["timestamp"].isoformat(), "key": row["key_prefix"],
        "team": row["team"] or None, "endpoint": row["endpoint"], "client_model": row["client_model"],
        "provider": row["provider"], "upstream_model": row["upstream_model"],
        "status_code": row["status_code"], "stream": row["stream"], "latency_ms": row["latency_ms"],
        "overhead_ms": row["overhead_ms"], "tokens_input": row["tokens_input"],
        "tokens_output": row["tokens_output"], "cost_usd": None if row["unpriced"] else float(row["cost_usd"]),
        "unpriced": row["unpriced"], "cache": row["cache"],
        "compliance": row["compliance"], "error": (row["error"] or "")[:300] or None,
    }


def search(q: str) -> Q:
    """Request id (exact or prefix), model name, or prompt text."""
    if _ID_LIKE.match(q):
        # A range, not LIKE, so the primary-key index answers it on every database.
        return Q(id__gte=q, id__lt=q + "\U0010ffff")
    return Q(client_model__icontains=q) | Q(upstream_model__icontains=q) | Q(prompt_text__icontains=q)


def _encode_cursor(value, log_id: str) -> str:
    if isinstance(value, datetime):
        value = value.isoformat()
    elif isinstance(value, Decimal):
        value = str(value)
    raw = json.dumps([value, log_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, column: str):
    try:
        value, log_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if "\x00" in f"{value}{log_id}":  # not one of ours, and PostgreSQL would refuse it
            raise ValueError
        if column == "timestamp":
            value = datetime.fromisoformat(value)
        elif column == "cost_usd":
            value = Decimal(value)
        return value, str(log_id)
    except Exception:
        raise BadQuery("'cursor' is not a cursor this API returned.") from None


def _after(column: str, descending: bool, value, log_id: str) -> Q:
    """Rows after (value, id) in the sort order; the leading lte/gte bound lets the index seek."""
    lt, le = ("lt", "lte") if descending else ("gt", "gte")
    return Q(**{f"{column}__{le}": value}) & (Q(**{f"{column}__{lt}": value}) | Q(**{column: value, f"id__{lt}": log_id}))


def in_teams(qs, teams: Collection[str] | None):
    """Only these teams' rows (None: every row, team or not)."""
    if teams is None:
        return qs
    # Sorted: the same teams give the same SQL. One team is `team = …`, an index seek.
    return qs.filter(team__in=sorted(teams))


def base_queryset(params: ListParams, teams: Collection[str] | None = None):
    qs = in_teams(VASLog.objects.all(), teams)
    if params.provider:
        qs = qs.filter(provider=params.provider)
    if params.cache:
        qs = qs.filter(cache=params.cache)
    if params.compliance:
        qs = qs.filter(compliance=params.compliance)
    if params.policy:  # to compare a routing policy's arms (their latency, cost, errors)
        qs = qs.filter(routing__policy=params.policy)
    if params.arm:
        qs = qs.filter(routing__arm=params.arm)
    if params.q:
        if not _ID_LIKE.match(params.q):
            qs = qs.annotate(prompt_text=Cast("prompt", TextField()))
        qs = qs.filter(search(params.q))
    return qs


def filter_logs(params, teams: Collection[str] | None = None) -> LogPage:
    """A page of VAS log summaries for query parameters (a QueryDict, a dict or ListParams).

    `teams`: the team names the reader may see (sso.teams.visible_teams); None: every row.
    """
    if not isinstance(params, ListParams):
        params = ListParams.parse(params)
    descending = params.sort.startswith("-")
    column = SORTS[params.sort.lstrip("-")]
    qs = base_queryset(params, teams)
    if column == "tokens_total":
        qs = qs.annotate(tokens_total=F("tokens_input") + F("tokens_output"))
    page_qs = qs
    if params.cursor:
        value, log_id = _decode_cursor(params.cursor, column)
        page_qs = page_qs.filter(_after(column, descending, value, log_id))
    order = (f"-{column}", "-id") if descending else (column, "id")
    fields = SUMMARY_FIELDS + ((column,) if column not in SUMMARY_FIELDS else ())
    start = 0 if params.cursor else params.offset
    rows = list(page_qs.order_by(*order).values(*fields)[start:start + params.limit + 1])
    more = len(rows) > params.limit
    rows = rows[:params.limit]
    next_cursor = _encode_cursor(rows[-1][column], rows[-1]["id"]) if more and rows else None
    if not more and not params.cursor:
        # The whole result is in hand: no count query needed.
        return LogPage(rows, params.offset + len(rows), True, None, params)
    total, exact = count(qs, params, whole_table=teams is None)
    return LogPage(rows, total, exact, next_cursor, params)


def count(qs, params: ListParams, whole_table: bool = True) -> tuple[int, bool]:
    """Exact up to COUNT_CAP; past it an estimate of the table (unfiltered) or the cap itself."""
    cap = SEARCH_COUNT_CAP if params.q else COUNT_CAP
    capped = qs.order_by().values("id")[:cap + 1].count()
    if capped <= cap:
        return capped, True
    if whole_table and not params.filtered:  # a team's reader must not learn the table's size
        return max(estimate_rows(), cap), False
    return cap, False


def estimate_rows() -> int:
    """The table's row count from the database's statistics, without scanning it."""
    table = VASLog._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [table])
            row = cursor.fetchone()
            if row and row[0] and row[0] > 0:
                return int(row[0])
        if connection.vendor == "sqlite":
            # Rowids only grow and retention deletes the oldest, so the span is close to the count.
            # Two subqueries: SQLite answers a lone min() or max() from the b-tree's ends.
            cursor.execute(f'SELECT (SELECT max(rowid) FROM "{table}") - (SELECT min(rowid) FROM "{table}") + 1')
            row = cursor.fetchone()
            return int(row[0] or 0)
    return COUNT_CAP
