"""Budgets and rate limits: what applies to a key, its windows and periods (UTC), live spend.

The policy is proxy/policies/limits.py; the counters are proxy/limits/counters.py.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

from django.core.signals import setting_changed
from django.dispatch import receiver

NANO = Decimal(1_000_000_000)  # spend is counted in nano-USD (integers: exact, atomic in Redis)
WINDOW_S = 60
clock = time.time  # tests inject the time here


@dataclass(frozen=True)
class Limits:
    """A key's own limits and its team's (None: no limit; 0 refuses every request); the tighter applies."""

    team_rpm: int | None = None
    team_tpm: int | None = None
    team_budget: Decimal | None = None
    period: str = "monthly"
    key_rpm: int | None = None
    key_tpm: int | None = None
    key_budget: Decimal | None = None

    @property
    def any(self) -> bool:
        return self.team_rpm is not None or self.key_rpm is not None or self.has_tokens or self.has_budget

    @property
    def has_tokens(self) -> bool:
        return self.team_tpm is not None or self.key_tpm is not None

    @property
    def has_budget(self) -> bool:
        return self.team_budget is not None or self.key_budget is not None


def nano(usd) -> int:
    return int((Decimal(usd) * NANO).to_integral_value())


def usd(nano_usd: int) -> Decimal:
    return (Decimal(nano_usd) / NANO).quantize(Decimal("1e-6"))


def period_of(period: str, now: float) -> tuple[str, float | None]:
    """(the period's id, seconds until it rolls over; None for 'total')."""
    if period == "total":
        return "total", None
    known = _periods.get(period)
    if known is None or not known[0] <= now < known[1]:  # datetime arithmetic once a period, not per request
        known = _periods[period] = _period_bounds(period, now)
    return known[2], known[1] - now


_periods: dict[str, tuple[float, float, str]] = {}


def _period_bounds(period: str, now: float) -> tuple[float, float, str]:
    """(start, end, id) of the daily or monthly period (UTC) holding now."""
    at = datetime.fromtimestamp(now, timezone.utc)
    if period == "daily":
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.timestamp(), start.timestamp() + 86400, f"d{at:%Y%m%d}"
    first = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    year, month = (first.year + 1, 1) if first.month == 12 else (first.year, first.month + 1)
    return first.timestamp(), first.replace(year=year, month=month).timestamp(), f"m{at:%Y%m}"


def period_ttl(period: str) -> int:
    """How long a period's counter is kept (0: forever)."""
    return {"daily": 2 * 86400, "total": 0}.get(period, 32 * 86400)


_prefix: str | None = None


def key_prefix() -> str:
    """The counters' Redis key prefix (read from the settings once, again when they change)."""
    global _prefix
    if _prefix is None:
        from django.conf import settings

        _prefix = f"{settings.SMARTFLOW_CACHE_PREFIX}:limits"
    return _prefix


@receiver(setting_changed)
def _prefix_changed(setting, **_):
    global _prefix
    if setting == "SMARTFLOW_CACHE_PREFIX":
        _prefix = None


def spend_key(scope: str, period_id: str, prefix: str | None = None) -> str:
    return f"{prefix or key_prefix()}:{scope}:s:{period_id}"


def team_spend(teams) -> dict[int, Decimal]:
    """Live settled spend of each team's current period (sync: management API, admin)."""
    from .counters import current, local

    now = clock()
    keys = [spend_key(f"t{t.pk}", period_of(t.budget_period, now)[0]) for t in teams]
    try:
        values = current().used(keys)
    except Exception:  # Redis down: what this process counted meanwhile (fail open)
        values = local.used(keys)
    else:
        if current() is not local:
            values = [v + w for v, w in zip(values, local.used(keys))]
    return {t.pk: usd(v) for t, v in zip(teams, values)}


def sync_spend(teams) -> dict[int, Decimal]:
    """Live spend, copied to Team.spent_usd where it changed (off the request path)."""
    from proxy.models import Team

    spent = team_spend(teams)
    for team in teams:
        if team.spent_usd != spent[team.pk]:
            team.spent_usd = spent[team.pk]
            Team.objects.filter(pk=team.pk).update(spent_usd=spent[team.pk])
    return spent
