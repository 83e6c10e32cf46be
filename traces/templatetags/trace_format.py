"""Template filters for the traces dashboard: the same number formats as its script."""
from datetime import datetime, timezone

from django import template

register = template.Library()


@register.filter
def ms(value) -> str:
    value = float(value or 0)
    if value >= 1000:
        return f"{value / 1000:,.2f} s"
    if value >= 100:
        return f"{value:,.0f} ms"
    if value >= 10:
        return f"{value:.1f} ms"
    return f"{value:.2f} ms"


@register.filter
def usd(value) -> str:
    if value is None:
        return "unpriced"
    value = float(value)
    if value == 0:
        return "$0"
    if value >= 1:
        return f"${value:,.2f}"
    if value >= 0.01:
        return f"${value:.4f}"
    return f"${value:.6f}"


@register.filter
def thousands(value) -> str:
    return f"{int(value or 0):,}"


@register.filter
def status_class(code) -> str:
    code = int(code or 0)
    if 200 <= code < 300:
        return "ok"
    if code == 499:
        return "gone"
    if 400 <= code < 500:
        return "warn"
    return "bad"


@register.filter
def utc_time(value: str) -> str:
    """ISO timestamp -> 'Nov 27 14:03:22.123' (UTC), as the script shows it."""
    moment = datetime.fromisoformat(value).astimezone(timezone.utc)
    return moment.strftime("%b %d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
