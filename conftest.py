"""Shared fixtures: the fake provider server, the live gateway, keys and teams."""
import asyncio
import os
import shutil
import signal
import socket
import sys
import threading
import time

import httpx
import pytest

from tests.fake_upstream import FakeUpstream  # noqa: E402

MASTER_KEY = "sk-sf-test-master-key"
PROVIDER_KEYS = {"openai": "sk-openai-test-key", "anthropic": "sk-ant-test-key",
                 "gemini": "AIza-test-gemini-key", "ollama": ""}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    from django.conf import settings

    for db in settings.DATABASES.values():
        if "postgresql" in db["ENGINE"]:
            db.setdefault("TEST", {})["NAME"] = f"test_smartflow_{os.getpid()}"


@pytest.fixture(scope="session", autouse=True)
def _remove_test_data_dir():
    yield
    recorder_module = sys.modules.get("traces.recorder")
    if recorder_module is not None:
        recorder_module.recorder.pending.clear()  # nothing may be written at exit into a deleted database
    shutil.rmtree(os.environ["SMARTFLOW_DATA_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def fake_upstream_server():
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def fake_upstream(fake_upstream_server):
    fake_upstream_server.reset()
    yield fake_upstream_server
    fake_upstream_server.reset()


class LiveGateway:
    """The real ASGI application served by uvicorn on two loopback ports, in a thread."""

    def __init__(self, proxy_port: int, management_port: int):
        self.proxy_port, self.management_port = proxy_port, management_port
        self.proxy_url = f"http://127.0.0.1:{proxy_port}"
        self.management_url = f"http://127.0.0.1:{management_port}"
        self.loop: asyncio.AbstractEventLoop | None = None
        self.servers = []

    def start(self):
        import uvicorn

        from proxy.http_protocol import OneWriteProtocol
        from smartflow.asgi import application

        ready = threading.Event()

        async def main():
            self.loop = asyncio.get_running_loop()
            for i, port in enumerate((self.proxy_port, self.management_port)):
                config = uvicorn.Config(application, host="127.0.0.1", port=port, lifespan="on" if i == 0 else "off",
                                        log_level="warning", access_log=False, http=OneWriteProtocol,
                                        ws="websockets-sansio")
                self.servers.append(uvicorn.Server(config))
            tasks = [asyncio.ensure_future(s.serve()) for s in self.servers]
            while not all(s.started for s in self.servers):
                await asyncio.sleep(0.01)
            ready.set()
            await asyncio.gather(*tasks)

        self.thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
        self.thread.start()
        if not ready.wait(15):
            raise RuntimeError("the live gateway did not start")

    def stop(self):
        for server in self.servers:
            server.should_exit = True
        self.thread.join(15)

    def quiesce(self, timeout: float = 5.0):
        """Waits, up to timeout, until the proxy port serves no request: one whose client left early
        ends later, and its trace must not land in the next test's database."""
        deadline = time.monotonic() + timeout
        while self.servers[0].server_state.tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def flush_traces(self):
        from traces.recorder import recorder

        recorder.flush_sync()
        wait_for(lambda: not recorder.writing)  # a batch the background writer took is committed too

    def log(self, log_id: str):
        """The VASLog of a request; the gateway records it just after answering, so poll."""
        from traces.models import VASLog

        def written():
            self.flush_traces()
            return VASLog.objects.filter(pk=log_id).first()
        return wait_for(written)

    def run(self, coro):
        """Runs a coroutine on the gateway's event loop (for state that lives there)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)


@pytest.fixture(scope="session")
def live_gateway(django_db_setup, django_db_blocker, fake_upstream_server):
    from django.conf import settings

    proxy_port, management_port = free_port(), free_port()
    settings.SMARTFLOW_PROXY_PORT = proxy_port
    settings.SMARTFLOW_MANAGEMENT_PORT = management_port
    settings.SMARTFLOW_MASTER_KEY = MASTER_KEY
    settings.SMARTFLOW_PROVIDER_KEYS = dict(PROVIDER_KEYS)
    base = fake_upstream_server.url
    settings.SMARTFLOW_BASE_URLS = {"openai": f"{base}/v1", "anthropic": base, "gemini": base, "ollama": base}
    # The gateway's threads use the database outside any one test.
    django_db_blocker.unblock()
    gateway = LiveGateway(proxy_port, management_port)
    gateway.start()
    yield gateway
    gateway.stop()  # its lifespan shutdown writes the traces still in memory
    from traces.recorder import recorder

    recorder.pending.clear()  # anything recorded after that would outlive the test database
    from django.db import connection

    if connection.vendor == "postgresql":  # the gateway's worker threads still hold connections
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    django_db_blocker.restore()


@pytest.fixture
def gateway(live_gateway, fake_upstream, transactional_db):
    """A running gateway with a clean database and a fresh fake upstream."""
    from proxy import keystore, routing
    from proxy.auth import forget_keys

    forget_keys()
    keystore.provider_keys.invalidate()
    routing.table.invalidate()
    yield live_gateway
    live_gateway.quiesce()
    live_gateway.flush_traces()


@pytest.fixture
def master_key():
    return MASTER_KEY


@pytest.fixture
def team(db):
    from proxy.models import Team

    return Team.objects.create(name="research", allowed_models=[])


@pytest.fixture
def virtual_key(team):
    from proxy.models import VirtualKey

    return VirtualKey.issue(team, name="test")[1]


@pytest.fixture
def proxy_client(gateway, master_key):
    with httpx.Client(base_url=gateway.proxy_url, timeout=30,
                      headers={"Authorization": f"Bearer {master_key}"}) as client:
        yield client


@pytest.fixture
def management_client(gateway, master_key):
    with httpx.Client(base_url=gateway.management_url, timeout=30,
                      headers={"Authorization": f"Bearer {master_key}"}) as client:
        yield client


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02):
    """Polls until predicate() is truthy (for work the gateway does off the request path)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


@pytest.fixture
def redis_server(tmp_path):
    """start(*args) -> (process, url): a redis-server of the test's own, to kill or hang (SIGSTOP)."""
    import subprocess

    import redis

    if not shutil.which("redis-server"):
        pytest.skip("needs redis-server")
    started = []

    def start(*args: str):
        port = free_port()
        server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                                   "--dir", str(tmp_path), *args], stdout=subprocess.DEVNULL)
        started.append(server)
        url = f"redis://127.0.0.1:{port}/0"

        def answers():
            try:
                return redis.Redis.from_url(url, socket_timeout=1).ping()
            except redis.AuthenticationError:
                return True
            except redis.RedisError:
                return False
        wait_for(answers)
        return server, url
    yield start
    for server in started:
        server.send_signal(signal.SIGCONT)  # a test may leave it hung
        server.kill()
        server.wait(5)
