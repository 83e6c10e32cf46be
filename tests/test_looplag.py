"""The benchmark's loop-lag probe reports a stall with its size, and full GC passes with theirs."""
import asyncio
import gc
import time

from smartflow.looplag import LoopLag


def _lines(path):
    return [line.split() for line in path.read_text().splitlines()]


def test_a_blocked_loop_shows_as_lag_and_a_full_gc_as_gc_time(tmp_path):
    path = tmp_path / "lag.log"
    probe = LoopLag(str(path))

    async def main():
        task = asyncio.create_task(probe.run())
        await asyncio.sleep(0.05)
        time.sleep(0.08)  # the stall the probe must see
        gc.collect()      # a full pass, counted in the fourth column
        deadline = time.time() + 3
        while time.time() < deadline and not any(float(f[1]) >= 70 for f in _lines(path) if path.exists()):
            await asyncio.sleep(0.05)
        task.cancel()

    try:
        asyncio.run(main())
    finally:
        gc.callbacks.remove(probe._on_gc)
    rows = _lines(path)
    assert max(float(r[1]) for r in rows) >= 70
    assert sum(int(r[2]) for r in rows) >= 1
    assert sum(float(r[3]) for r in rows) > 0
    assert all(int(r[0]) <= time.time() for r in rows)
