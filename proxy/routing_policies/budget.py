"""The retry budget: retries of one target may add at most RATIO extra attempts over a sliding
WINDOW_S (plus a floor of FLOOR, so a quiet gateway can still retry one request), counted in
this process. Each process budgets its own traffic, so the sum over processes keeps the ratio
too, with no shared state to consult on the request path (compare Linkerd's retry budget:
retryRatio 0.2 with minRetriesPerSecond)."""
from __future__ import annotations

import time
from collections import deque

RATIO = 0.2
WINDOW_S = 10.0
FLOOR = 3


class Budget:
    def __init__(self):
        self.first: dict[str, deque[float]] = {}
        self.retries: dict[str, deque[float]] = {}

    @staticmethod
    def _count(times: deque[float], now: float) -> int:
        while times and times[0] <= now - WINDOW_S:
            times.popleft()
        return len(times)

    def attempted(self, key: str) -> None:
        """A first attempt on the target."""
        now = time.monotonic()
        times = self.first.setdefault(key, deque())
        times.append(now)
        if len(times) > 100_000:
            self._count(times, now)

    def may_retry(self, key: str) -> bool:
        """Whether one more retry fits (and counts it if so)."""
        now = time.monotonic()
        firsts = self._count(self.first.setdefault(key, deque()), now)
        retries = self.retries.setdefault(key, deque())
        if self._count(retries, now) >= max(FLOOR, RATIO * firsts):
            return False
        retries.append(now)
        return True

    def reset(self):
        self.first.clear()
        self.retries.clear()


budget = Budget()
