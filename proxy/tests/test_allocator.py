"""A gateway process's tuning: serve tunes glibc's allocator so freed large blocks go back to the
system (flat RSS), start-up loads nothing the process does not use, and the ASGI lifespan sets the
GC's and the GIL's thresholds."""
import ctypes.util
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, ctypes.util, sys
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "tuned":
    from proxy.management.commands.serve import tune_allocator
    assert tune_allocator()
size = 600 * 1024
libc.free(libc.malloc(size))          # glibc's default raises its mmap threshold past this size here
block = libc.malloc(size)
print(libc.mallinfo2().hblkhd >= size)  # mapped, so returned to the system when freed
"""


@pytest.mark.skipif(not hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallinfo2"), reason="needs glibc")
@pytest.mark.parametrize("mode, mapped", [("default", "False"), ("tuned", "True")])
def test_a_large_block_freed_once_is_still_mapped_after_tuning(mode, mapped):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == mapped


def test_a_gateway_process_does_not_load_twisted():
    """daphne's AppConfig imported Twisted and Autobahn (~19 MiB a process) that uvicorn never uses."""
    import os

    code = ("import django, sys; django.setup(); import smartflow.asgi; "
            "print(sorted(m for m in ('twisted', 'autobahn', 'daphne.server') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "DJANGO_SETTINGS_MODULE": "smartflow.settings"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


LIFESPAN = r"""
import asyncio, gc, sys
import django
django.setup()
from smartflow import asgi

async def main():
    messages = asyncio.Queue()
    sent = []
    for kind in ("lifespan.startup", "lifespan.shutdown"):
        messages.put_nowait({"type": kind})
    async def send(message):
        sent.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            print(gc.get_threshold()[0], sys.getswitchinterval())
    await asgi.application({"type": "lifespan"}, messages.get, send)
    print(sent)

print(gc.get_threshold()[0], sys.getswitchinterval())
asyncio.run(main())
"""


def test_the_served_process_is_tuned_at_start_up(tmp_path):
    """Start-up moves the young GC's threshold and shortens the GIL's switch interval (another
    thread's Python, the trace writer's, held the loop up to 5 ms at a time otherwise)."""
    import os

    from smartflow.asgi import GC_YOUNG_THRESHOLD, SWITCH_INTERVAL_S

    out = subprocess.run([sys.executable, "-c", LIFESPAN], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "DJANGO_SETTINGS_MODULE": "smartflow.settings",
                              "SMARTFLOW_DATA_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    before, during, sent = out.stdout.strip().splitlines()
    assert before == "700 0.005"
    assert during == f"{GC_YOUNG_THRESHOLD} {SWITCH_INTERVAL_S}"
    assert sent == "['lifespan.startup.complete', 'lifespan.shutdown.complete']"
