"""Serves the ASGI application on the proxy and management ports.

uvicorn (uvloop + httptools) is the default: daphne could not reach the
proxy's throughput target (bench/README.md); `--server daphne` runs the same
application under daphne. `--workers N` forks N processes that share the two
listening sockets; their counters add up only through Redis (REDIS_URL).
The parent supervises them: a worker that dies is replaced, and SIGTERM or
Ctrl-C stops every worker gracefully (each writes its traces first).
Idle keep-alive connections stay open SMARTFLOW_KEEPALIVE_SECONDS.
"""
import asyncio
import ctypes
import ctypes.util
import os
import signal
import socket
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections


# glibc mallopt parameters (malloc.h).
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8


def tune_allocator() -> bool:
    """Keeps glibc's heap from fragmenting under load, so RSS stays flat (bench/run.sh soak).

    By default glibc raises its mmap threshold to the size of each large block freed, so the
    trace writer's batch buffers end up inside the heap, and every thread may get its own arena:
    free memory piled up in the gaps (+12 MiB of free heap over a soak, never returned). A fixed
    threshold sends blocks over 128 KiB to mmap (returned when freed); two arenas bound the
    per-thread ones. Returns whether the settings took (False off glibc).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024) and libc.mallopt(M_ARENA_MAX, 2))
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to tune
        return False


def listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Command(BaseCommand):
    help = "Run the gateway on SMARTFLOW_PROXY_PORT and SMARTFLOW_MANAGEMENT_PORT."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="0.0.0.0")
        parser.add_argument("--server", choices=["uvicorn", "daphne"], default="uvicorn")
        parser.add_argument("--workers", type=int, default=int(os.environ.get("SMARTFLOW_WORKERS", "1")))
        parser.add_argument("--log-level", default="warning")

    def handle(self, *args, host, server, workers, log_level, **options):
        tune_allocator()  # before the worker threads make their arenas; forked workers inherit it
        ports = (settings.SMARTFLOW_PROXY_PORT, settings.SMARTFLOW_MANAGEMENT_PORT)
        self.stdout.write(f"Smartflow: proxy on {host}:{ports[0]}, management on {host}:{ports[1]} "
                          f"({server}, {workers} worker{'s' if workers > 1 else ''})")
        if server == "daphne":
            if workers > 1:
                raise CommandError("--server daphne runs one process; --workers needs uvicorn.")
            serve_daphne(host, ports)
            return
        if workers > 1 and not settings.REDIS_URL:
            raise CommandError("--workers above 1 needs REDIS_URL: without it each process would keep "
                               "its own metrics counters and rate-limit state.")
        sockets = [listen(host, port) for port in ports]
        if workers <= 1:
            serve(sockets, log_level)
            return
        connections.close_all()  # no database connection may be shared across fork
        Supervisor(sockets, log_level, workers, self.stderr).run()


class Supervisor:
    """Keeps N worker processes serving; on SIGTERM or SIGINT stops them all gracefully."""

    RESTART_PAUSE = 1.0  # a worker that dies at once is not restarted in a tight loop
    STOP_TIMEOUT = 45.0  # past uvicorn's 30 s graceful shutdown, stragglers are killed

    def __init__(self, sockets, log_level, count, out):
        self.sockets, self.log_level, self.count, self.out = sockets, log_level, count, out
        self.children: dict[int, float] = {}  # pid -> when it started
        self.stopping = False

    def spawn(self):
        pid = os.fork()
        if pid == 0:
            try:
                # Its own process group: a terminal's Ctrl-C reaches only the parent, which
                # stops each worker once (a second SIGINT would make uvicorn skip the flush).
                os.setpgid(0, 0)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                serve(self.sockets, self.log_level, parent=os.getppid())
            finally:
                os._exit(0)
        self.children[pid] = time.monotonic()
        self.out.write(f"Smartflow: worker {pid} started")

    def stop(self, sig, frame):
        # The first signal asks every worker for a graceful stop; a second Ctrl-C forces it.
        forward = signal.SIGTERM if not self.stopping else sig
        self.stopping = True
        for pid in self.children:
            try:
                os.kill(pid, forward)
            except ProcessLookupError:
                pass

    def run(self):
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for _ in range(self.count):
            self.spawn()
        deadline = None
        while self.children:
            if self.stopping and deadline is None:
                deadline = time.monotonic() + self.STOP_TIMEOUT
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:  # nobody exited: look again shortly (signals are handled meanwhile)
                if deadline is not None and time.monotonic() > deadline:
                    for child in self.children:
                        os.kill(child, signal.SIGKILL)
                time.sleep(0.1)
                continue
            started = self.children.pop(pid, None)
            if started is None or self.stopping:
                continue
            self.out.write(f"Smartflow: worker {pid} exited ({describe(status)}); starting another")
            if time.monotonic() - started < self.RESTART_PAUSE:
                time.sleep(self.RESTART_PAUSE)
            if not self.stopping:
                self.spawn()


def describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def serve_daphne(host: str, ports):
    """daphne has no lifespan: the first request starts the trace writer, process exit flushes it."""
    from daphne.server import Server  # installs Twisted's asyncio reactor: before importing the reactor
    from twisted.internet import reactor

    from smartflow.asgi import application

    server = Server(application=application, endpoints=[f"tcp:port={p}:interface={host}" for p in ports])

    def keep_alive():
        # Twisted's idle timeout of a connection (60 s by default) is the keep-alive time.
        server.http_factory.timeOut = settings.SMARTFLOW_KEEPALIVE_SECONDS

    reactor.callWhenRunning(keep_alive)
    server.run()
    sys.exit(0)  # a normal exit runs the recorder's final flush (atexit)


def serve(sockets: list[socket.socket], log_level: str, parent: int | None = None):
    """Both ports in one event loop; the lifespan (trace writer) runs once per process."""
    import uvicorn
    import uvloop

    from proxy.http_protocol import OneWriteProtocol
    from smartflow.asgi import application

    class Server(uvicorn.Server):
        group: list = []

        def handle_exit(self, sig, frame):
            # One signal stops both ports (each server would catch it for itself only).
            for server in self.group:
                uvicorn.Server.handle_exit(server, sig, frame)

        async def on_tick(self, counter):
            if parent is not None and counter % 10 == 0 and os.getppid() != parent:
                self.handle_exit(signal.SIGTERM, None)  # the supervisor is gone: stop, writing traces
            return await super().on_tick(counter)

    async def main():
        for i, sock in enumerate(sockets):
            config = uvicorn.Config(application, loop="uvloop", http=OneWriteProtocol, ws="websockets-sansio",
                                    lifespan="on" if i == 0 else "off", log_level=log_level,
                                    access_log=False, timeout_graceful_shutdown=30,
                                    timeout_keep_alive=settings.SMARTFLOW_KEEPALIVE_SECONDS)
            Server.group.append(Server(config))
        await asyncio.gather(*(s.serve(sockets=[sock]) for s, sock in zip(Server.group, sockets)))

    uvloop.run(main())
