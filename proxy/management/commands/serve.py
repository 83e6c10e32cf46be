"""Serves the ASGI application on the proxy and management ports.

uvicorn (uvloop + httptools) is the default: daphne could not reach the
proxy's throughput target (see bench/README.md); `--server daphne` runs the
same application under daphne.
"""
import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run the gateway on SMARTFLOW_PROXY_PORT and SMARTFLOW_MANAGEMENT_PORT."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="0.0.0.0")
        parser.add_argument("--server", choices=["uvicorn", "daphne"], default="uvicorn")
        parser.add_argument("--log-level", default="warning")

    def handle(self, *args, host, server, log_level, **options):
        ports = (settings.SMARTFLOW_PROXY_PORT, settings.SMARTFLOW_MANAGEMENT_PORT)
        self.stdout.write(f"Smartflow: proxy on {host}:{ports[0]}, management on {host}:{ports[1]} ({server})")
        if server == "daphne":
            from daphne.cli import CommandLineInterface

            CommandLineInterface().run([*(f"-e=tcp:{p}:interface={host}" for p in ports),
                                        "smartflow.asgi:application"])
            return
        import uvicorn

        from smartflow.asgi import application

        class Server(uvicorn.Server):
            group: list = []

            def handle_exit(self, sig, frame):
                # One signal stops both ports (each server would catch it for itself only).
                for server in self.group:
                    uvicorn.Server.handle_exit(server, sig, frame)

        async def main():
            servers = Server.group
            for i, port in enumerate(ports):
                config = uvicorn.Config(application, host=host, port=port, loop="uvloop", http="httptools",
                                        ws="websockets-sansio", lifespan="on" if i == 0 else "off",
                                        log_level=log_level, access_log=False, timeout_graceful_shutdown=30)
                servers.append(Server(config))
            await asyncio.gather(*(s.serve() for s in servers))

        import uvloop

        uvloop.run(main())
