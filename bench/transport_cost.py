"""The upstream client's own cost a call: the shared client (httpx on proxy/transport.py), aiohttp's
client as httpx-aiohttp used it, and a bare asyncio protocol writing one request and reading one
answer (the floor: the round trip itself), one call at a time against a static upstream on loopback.

    .venv/bin/python bench/transport_cost.py            # its own static upstream (uvloop, one process)
    BENCH_UPSTREAM=http://127.0.0.1:PORT .venv/bin/python bench/transport_cost.py   # e.g. bench/run.sh's nginx
"""
import asyncio
import multiprocessing
import os
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smartflow.settings")

import django  # noqa: E402

django.setup()

import aiohttp  # noqa: E402
import httptools  # noqa: E402
import orjson  # noqa: E402
import uvloop  # noqa: E402

from proxy import upstream  # noqa: E402

ANSWER = (Path(__file__).parent / "payloads" / "openai_response.json").read_bytes().strip()
BODY = {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "hello there"}]}
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
CALLS = int(os.environ.get("BENCH_CALLS", 5000))


def serve(sock: socket.socket):
    reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)

    class Static(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.buffer = transport, b""

        def data_received(self, data):  # one answer per request: the requests here have a body
            self.buffer += data
            while b"\r\n\r\n" in self.buffer:
                head, _, rest = self.buffer.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                if len(rest) < length:
                    return
                self.buffer = rest[length:]
                self.transport.write(reply)

    async def main():
        server = await asyncio.get_running_loop().create_server(Static, sock=sock)
        await server.serve_forever()

    uvloop.run(main())


class Bare(asyncio.Protocol):
    def __init__(self):
        self.parser, self.done, self.body = httptools.HttpResponseParser(self), None, []

    def data_received(self, data):
        self.parser.feed_data(data)

    def on_body(self, body):
        self.body.append(body)

    def on_message_complete(self):
        self.done.set_result(b"".join(self.body))


async def measure(name: str, call) -> float:
    for _ in range(300):
        await call()
    times = []
    for _ in range(CALLS):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    p50 = statistics.median(times) * 1e6
    print(f"  {name:34s} p50 {p50:7.1f} us   mean {statistics.mean(times) * 1e6:7.1f} us")
    return p50


async def main(url: str):
    target = url + "/v1/chat/completions"
    shared = upstream.client()

    async def via_shared():
        response = await shared.post_json(target, HEADERS, BODY)
        await response.aread()
        await response.aclose()

    session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())

    async def via_aiohttp():
        async with session.post(target, data=orjson.dumps(BODY), headers=HEADERS) as response:
            await response.read()

    loop = asyncio.get_running_loop()
    host, port = url.split("//")[1].split(":")
    _, bare = await loop.create_connection(Bare, host, int(port))
    bare.transport = _

    async def via_bare():
        bare.done, bare.body = loop.create_future(), []
        body = orjson.dumps(BODY)
        bare.transport.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
                             b"authorization: Bearer sk-bench\r\ncontent-length: %d\r\n\r\n%s"
                             % (host.encode(), len(body), body))
        await bare.done

    print(f"one call at a time, {CALLS} calls each, against {url}:")
    for _ in range(2):  # the second round is the one to read: the first warms the machine up
        shared_p50 = await measure("shared client (httpx + transport.py)", via_shared)
        aiohttp_p50 = await measure("aiohttp client", via_aiohttp)
        bare_p50 = await measure("bare protocol (the round trip)", via_bare)
    print(f"  above the round trip: shared client {shared_p50 - bare_p50:.1f} us, "
          f"aiohttp {aiohttp_p50 - bare_p50:.1f} us")
    await session.close()
    await upstream.close()


if __name__ == "__main__":
    url = os.environ.get("BENCH_UPSTREAM")
    child = None
    if not url:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        child = multiprocessing.get_context("fork").Process(target=serve, args=(sock,), daemon=True)
        child.start()
    try:
        uvloop.run(main(url))
    finally:
        if child is not None:
            child.terminate()
