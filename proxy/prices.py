"""The price table: what a request cost, from the provider's own usage numbers.

Shipped as proxy/prices.json, overridden or extended by admin ModelPrice rows, cached as a
Snapshot (reloaded within SMARTFLOW_CONFIG_TTL). A model found nowhere has no price: callers
record it as unpriced, never as $0.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from functools import cached_property
from pathlib import Path

from .snapshot import Snapshot

PRICES_FILE = Path(__file__).with_name("prices.json")
MILLION = Decimal(1_000_000)
NANO = Decimal(1_000_000_000)


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal

    def cost(self, usage: dict | None) -> Decimal:
        """The cost of an OpenAI-form usage dict: prompt_tokens includes the cached tokens
        (prompt_tokens_details.cached_tokens, read from the cache) and the cache writes
        (prompt_tokens_details.cache_write_tokens), each priced at its own rate."""
        usage = usage if isinstance(usage, dict) else {}
        details = usage.get("prompt_tokens_details")
        details = details if isinstance(details, dict) else {}
        prompt = _count(usage.get("prompt_tokens"))
        read = min(_count(details.get("cached_tokens")), prompt)
        write = min(_count(details.get("cache_write_tokens")), prompt - read)
        fresh = prompt - read - write
        micro = (fresh * self.input + read * self.cache_read + write * self.cache_write
                 + _count(usage.get("completion_tokens")) * self.output)
        return (micro / MILLION).quantize(Decimal("1e-8"))

    def worst_case_nano(self, prompt_tokens: int, output_tokens: int) -> int:
        """The most a request can cost, in nano-USD: every prompt token at the dearest prompt rate,
        rounded up to the 1e-8 USD that cost() rounds to (so no cost is above it). In integers: the
        limits hold it on every request, and Decimal arithmetic costs microseconds there."""
        rate, output = self._nano_rates
        return -(-(prompt_tokens * rate + output_tokens * output) // 10_000_000) * 10

    @cached_property
    def _nano_rates(self) -> tuple[int, int]:
        """Nano-USD per million tokens: the dearest prompt rate and the output rate (a price finer
        than a nano-USD per million tokens, were one set, is rounded up)."""
        rate = max(self.input, self.cache_read, self.cache_write)
        return tuple(int((value * NANO).to_integral_value(ROUND_CEILING)) for value in (rate, self.output))


def _count(value) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def _decimal(value, fallback: Decimal | None = None) -> Decimal:
    if value is None:
        return fallback
    return Decimal(str(value))


def make_price(input, output, cache_read=None, cache_write=None) -> Price:
    price_in = _decimal(input)
    return Price(price_in, _decimal(output), _decimal(cache_read, price_in), _decimal(cache_write, price_in))


@dataclass
class PriceTable:
    entries: dict[tuple[str, str], Price]

    def lookup(self, provider: str, model: str) -> Price | None:
        """Exact name, else the longest name the model extends (dated or suffixed variants:
        name-…, name:…, name@…), else the provider's '*' row."""
        found = self.entries.get((provider, model))
        if found is not None:
            return found
        best, best_len = None, -1
        for (row_provider, name), price in self.entries.items():
            if (row_provider == provider and len(name) > best_len and model.startswith(name)
                    and len(model) > len(name) and model[len(name)] in "-:@"):
                best, best_len = price, len(name)
        return best if best is not None else self.entries.get((provider, "*"))


def load_table() -> PriceTable:
    entries = {(r["provider"], r["model"]): make_price(r["input"], r["output"], r.get("cache_read"),
                                                       r.get("cache_write"))
               for r in json.loads(PRICES_FILE.read_text())["prices"]}
    try:
        from .models import ModelPrice

        for row in ModelPrice.objects.all():
            entries[(row.provider, row.model)] = make_price(
                row.input_usd_per_mtok, row.output_usd_per_mtok, row.cache_read_usd_per_mtok,
                row.cache_write_usd_per_mtok)
    except Exception:  # table missing before migrate: the file alone is the table
        pass
    return PriceTable(entries)


table = Snapshot(load_table)


def lookup(provider: str, model: str) -> Price | None:
    """From the last table loaded (the request path awaits `table.get()` first, in
    gateway.prepare); loads it synchronously only when nothing was loaded yet."""
    return (table.last() or table.get_sync()).lookup(provider, model)
