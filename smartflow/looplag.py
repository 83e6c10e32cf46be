"""The event loop's lag, for the benchmark (SMARTFLOW_LOOP_LAG_FILE).

A 1 ms ticker measures how late the loop runs it; each second it appends one line to the file:
``<unix time> <worst lag ms> <ticks over 5 ms> <ms in full GC passes>``. bench/run.sh reads the
lines of each run's window, so a stall shows with its size and, when the cyclic GC caused it,
with that too. Off unless the setting names a file: 1,000 wake-ups a second are not free.
"""
import asyncio
import gc
import os
import time

TICK_S = 0.001


class LoopLag:
    def __init__(self, path: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.gc_ms = 0.0
        self._gc_start = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase, info):
        if info["generation"] != 2:
            return
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_ms += (time.perf_counter() - self._gc_start) * 1000

    async def run(self):
        second, worst, late = int(time.time()), 0.0, 0
        while True:
            before = time.perf_counter()  # not loop.time(): uvloop's clock counts whole milliseconds
            await asyncio.sleep(TICK_S)
            lag_ms = (time.perf_counter() - before - TICK_S) * 1000
            worst = max(worst, lag_ms)
            late += lag_ms > 5
            now = int(time.time())
            if now != second:
                # A few bytes to a local file: an append, not worth a thread.
                os.write(self.fd, f"{second} {worst:.3f} {late} {self.gc_ms:.3f}\n".encode())
                second, worst, late, self.gc_ms = now, 0.0, 0, 0.0


_task = None


def start(path: str):
    global _task
    if path and _task is None:
        _task = asyncio.get_running_loop().create_task(LoopLag(path).run())
