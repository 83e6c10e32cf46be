"""Serves the ASGI application on the proxy and management ports.

uvicorn (uvloop + httptools) is the default: daphne could not reach the
proxy's throughput target (bench/README.md); `--server daphne` runs the same
application under daphne. `--workers N` forks N processes that share the two
listening sockets; their counters add up only through Redis (REDIS_URL).
"""
import asyncio
import os
import signal
import socket

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections


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
        ports = (settings.SMARTFLOW_PROXY_PORT, settings.SMARTFLOW_MANAGEMENT_PORT)
        self.stdout.write(f"Smartflow: proxy on {host}:{ports[0]}, management on {host}:{ports[1]} "
                          f"({server}, {workers} worker{'s' if workers > 1 else ''})")
        if server == "daphne":
            from daphne.cli import CommandLineInterface

            CommandLineInterface().run([*(f"-e=tcp:{p}:interface={host}" for p in ports),
                                        "smartflow.asgi:application"])
            return
        if workers > 1 and not settings.REDIS_URL:
            raise CommandError("--workers above 1 needs REDIS_URL: without it each process would keep "
                               "its own metrics counters and rate-limit state.")
        sockets = [listen(host, port) for port in ports]
        if workers <= 1:
            serve(sockets, log_level)
            return
        connections.close_all()  # no database connection may be shared across fork
        children = []
        for _ in range(workers):
            pid = os.fork()
            if pid == 0:
                try:
                    serve(sockets, log_level)
                finally:
                    os._exit(0)
            children.append(pid)

        def forward(sig, frame):
            for child in children:
                os.kill(child, sig)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        for child in children:
            os.waitpid(child, 0)


def serve(sockets: list[socket.socket], log_level: str):
    """Both ports in one event loop; the lifespan (trace writer) runs once per process."""
    import uvicorn
    import uvloop

    from smartflow.asgi import application

    class Server(uvicorn.Server):
        group: list = []

        def handle_exit(self, sig, frame):
            # One signal stops both ports (each server would catch it for itself only).
            for server in self.group:
                uvicorn.Server.handle_exit(server, sig, frame)

    async def main():
        for i, sock in enumerate(sockets):
            config = uvicorn.Config(application, loop="uvloop", http="httptools", ws="websockets-sansio",
                                    lifespan="on" if i == 0 else "off", log_level=log_level,
                                    access_log=False, timeout_graceful_shutdown=30)
            Server.group.append(Server(config))
        await asyncio.gather(*(s.serve(sockets=[sock]) for s, sock in zip(Server.group, sockets)))

    uvloop.run(main())
