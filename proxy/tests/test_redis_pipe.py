"""The pipelined Redis client of the limits (proxy/redis_pipe.py), against real redis-servers."""
import asyncio
import shutil
import signal
import ssl
import subprocess
import time

import pytest
import redis

from conftest import free_port
from proxy import redis_pipe
from proxy.redis_pipe import Pipe, RedisError, Script


async def connected(url: str) -> tuple[Pipe, list]:
    """A connected Pipe and its connection's writes from now on (asyncio's Python transport)."""
    pipe = Pipe(url, 2, 2)
    await pipe.connect()
    writes = []
    transport = pipe.proto.transport
    write = transport.write
    transport.write = lambda data: (writes.append(data), write(data))[1]
    return pipe, writes


def test_concurrent_calls_each_get_their_own_answer_in_one_write_per_loop_turn(redis_server):
    _, url = redis_server()

    async def main():
        pipe, writes = await connected(url)
        answers = await asyncio.gather(*(pipe.call("ECHO", f"call-{i}") for i in range(500)))
        assert answers == [f"call-{i}".encode() for i in range(500)]
        assert len(writes) == 1  # 500 commands, one syscall
        assert await pipe.call("INCRBY", "n", 5) == 5 and await pipe.call("GET", "missing") is None
        with pytest.raises(RedisError, match="WRONGTYPE"):
            await pipe.call("HGET", "n", "field")
        assert await pipe.call("INCR", "n") == 6  # an error reply leaves the connection in step
    asyncio.run(main())


SLOW = Script("""local start = redis.call('TIME')
repeat local now = redis.call('TIME')
until (now[1] - start[1]) * 1e6 + (now[2] - start[2]) >= tonumber(ARGV[1])
return 1""")  # Redis busy for ARGV[1] microseconds


def test_calls_made_while_a_write_is_answered_go_together_in_the_next_write(redis_server):
    """At load a write and a read serve many calls; a call alone is written in its own loop turn."""
    _, url = redis_server()

    async def main():
        pipe, writes = await connected(url)
        await pipe.script(SLOW, [], [0])
        writes.clear()
        slow = asyncio.ensure_future(pipe.script(SLOW, [], [200_000]))
        await asyncio.sleep(0.02)
        assert len(writes) == 1  # written at once: nothing was in flight
        calls = []
        for i in range(30):  # one call a loop turn while Redis is busy with the first
            calls.append(asyncio.ensure_future(pipe.call("ECHO", f"call-{i}")))
            await asyncio.sleep(0.001)
        assert len(writes) == 1  # held back while the first is answered
        assert await slow == 1
        assert await asyncio.gather(*calls) == [f"call-{i}".encode() for i in range(30)]
        assert len(writes) == 2  # the thirty, in one write
        assert await pipe.call("ECHO", "alone") == b"alone" and len(writes) == 3
    asyncio.run(main())


def test_a_started_script_is_written_at_once_unless_a_write_waits_for_its_answer(redis_server):
    """start(): the caller goes on working while Redis answers, so its command cannot wait for the
    end of the loop turn; behind an unanswered write it is gathered as a call is."""
    _, url = redis_server()
    script = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")

    async def main():
        assert Pipe(url, 2, 2).start(script, ["n"], [1]) is None  # not connected: script() connects
        pipe, writes = await connected(url)
        assert pipe.start(script, ["n"], [1]) is None and not writes  # not loaded on this connection
        assert await pipe.script(script, ["n"], [1]) == 1
        writes.clear()
        first = pipe.start(script, ["n"], [10])
        assert len(writes) == 1  # before this coroutine yielded
        assert await first == 11
        slow = asyncio.ensure_future(pipe.script(SLOW, [], [100_000]))
        await asyncio.sleep(0.02)  # written, Redis busy answering it
        second, third = pipe.start(script, ["n"], [100]), pipe.start(script, ["n"], [1000])
        assert len(writes) == 2  # held back behind the busy one
        assert (await slow, await second, await third) == (1, 111, 1111)
        assert len(writes) == 3  # the two together
    asyncio.run(main())


def test_a_command_sent_now_is_written_at_once_unless_a_write_waits_for_its_answer(redis_server):
    """send_now() (the cache's lookup sent ahead): as start() for a plain command."""
    _, url = redis_server()

    async def main():
        pipe, writes = await connected(url)
        first = pipe.send_now("ECHO", "ahead")
        assert len(writes) == 1  # before this coroutine yielded
        assert await first == b"ahead"
        slow = asyncio.ensure_future(pipe.script(SLOW, [], [100_000]))
        await asyncio.sleep(0.02)
        second, third = pipe.send_now("ECHO", "b"), pipe.send_now("ECHO", "c")
        assert len(writes) == 2  # held back behind the busy script
        assert (await slow, await second, await third) == (1, b"b", b"c")
        assert len(writes) == 3  # the two together
    asyncio.run(main())


def test_a_posted_script_answers_its_callback_in_step_with_the_awaited_calls(redis_server):
    _, url = redis_server()
    script = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    told = []

    def then(answer, error, tag):
        told.append((tag, answer, type(error).__name__ if error else None))
        if tag == "bad-callback":
            raise RuntimeError("a callback that fails")

    async def main():
        pipe, writes = await connected(url)
        assert not pipe.post(script, ["n"], [1], then, "not-loaded")  # the connection has not loaded it: script()
        assert await pipe.script(script, ["n"], [1]) == 1
        assert pipe.post(script, ["n"], [10], then, "first") and pipe.post(script, ["n"], [0], then, "bad-callback")
        assert pipe.post(Script("return redis.call('HGET', KEYS[1], 'f')"), ["n"], [], then, "never-loaded") is False
        await asyncio.sleep(0)
        assert len(writes) == 1  # lazy: they wait for the next write
        assert await pipe.call("GET", "n") == b"11"  # answered behind them, in step
        assert told == [("first", 11, None), ("bad-callback", 11, None)]
        await pipe.call("SCRIPT", "FLUSH")
        assert pipe.post(script, ["n"], [5], then, "flushed")
        assert await pipe.call("GET", "n") == b"11"
        assert told[-1] == ("flushed", None, "RedisError")
    asyncio.run(main())


def test_a_posted_script_is_told_when_its_connection_is_lost(redis_server):
    server, url = redis_server()
    told = []
    script = Script("return 1")

    async def main():
        pipe = Pipe(url, 1, 1)
        await pipe.script(script, [], [])
        server.kill()
        server.wait(5)
        assert pipe.post(script, [], [], lambda answer, error: told.append((answer, type(error).__name__)))
        for _ in range(100):
            if told:
                break
            await asyncio.sleep(0.02)
        assert told == [(None, "ConnectionError")]
        assert not pipe.post(script, [], [], lambda *_: None)  # lost: nothing more is posted on it
    asyncio.run(main())


def test_a_call_whose_arguments_cannot_be_sent_fails_alone(redis_server):
    """Had it left a future waiting for an answer it never asked for, every later call on the
    connection would get the answer of the one before it (another request's cache entry)."""
    _, url = redis_server()

    async def main():
        pipe, _ = await connected(url)
        await pipe.call("SET", "mine", "value")
        for bad in (None, True, "\udc80"):
            with pytest.raises((TypeError, UnicodeEncodeError)):
                await pipe.call("SET", "k", bad)
        assert await asyncio.gather(pipe.call("ECHO", "a"), pipe.call("GET", "mine")) == [b"a", b"value"]
    asyncio.run(main())

def test_a_lazy_call_rides_with_the_next_write_or_goes_alone_soon(redis_server):
    _, url = redis_server()

    async def main():
        pipe, writes = await connected(url)
        lazy = pipe.send("INCR", "lazy", lazy=True)
        await asyncio.sleep(0)
        assert writes == []  # held for the next write
        assert await pipe.call("GET", "lazy") == b"1"  # written before it, in the same write
        assert await lazy == 1 and len(writes) == 1
        started = time.monotonic()
        assert await pipe.send("INCR", "lazy", lazy=True) == 2  # nothing else to ride with: sent within LAZY_S
        assert time.monotonic() - started < redis_pipe.LAZY_S + 0.5 and len(writes) == 2
    asyncio.run(main())


def test_a_script_flushed_from_redis_is_sent_whole(redis_server):
    _, url = redis_server()
    script = Script("return {KEYS[1], ARGV[1]}")

    async def main():
        pipe, writes = await connected(url)
        assert await pipe.script(script, ["k"], ["v"]) == [b"k", b"v"]  # new connection: EVAL, one round trip
        assert await pipe.script(script, ["k2"], [7]) == [b"k2", b"7"]
        assert [w.split(b"\r\n")[2] for w in writes] == [b"EVAL", b"EVALSHA"]
        await pipe.call("SCRIPT", "FLUSH")
        assert await pipe.script(script, ["k3"], ["x"]) == [b"k3", b"x"]  # NOSCRIPT, then EVAL
        assert [w.split(b"\r\n")[2] for w in writes[3:]] == [b"EVALSHA", b"EVAL"]
    asyncio.run(main())


def test_a_hung_redis_fails_every_waiting_call_at_the_timeout_and_a_new_connection_follows(redis_server):
    server, url = redis_server()

    async def main():
        pipe = Pipe(url, 0.3, 1)
        assert await pipe.call("SET", "k", "before") == b"OK"
        server.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        results = await asyncio.gather(*(pipe.call("GET", "k") for _ in range(20)), return_exceptions=True)
        assert all(isinstance(r, TimeoutError) for r in results), results
        assert time.monotonic() - started < 1.0
        server.send_signal(signal.SIGCONT)
        assert await pipe.call("GET", "k") == b"before"  # reconnected: answers are in step again
    asyncio.run(main())


def test_a_killed_redis_fails_fast_and_callers_waiting_do_not_each_retry(redis_server):
    server, url = redis_server()

    async def main():
        pipe = Pipe(url, 1, 1)
        await pipe.call("PING")
        server.kill()
        server.wait(5)
        with pytest.raises(ConnectionError):
            await pipe.call("PING")  # the connection is lost: this one fails, and so do the next
        attempts = []
        opened = pipe._open

        async def counted():
            attempts.append(1)
            return await opened()
        pipe._open = counted
        started = time.monotonic()
        results = await asyncio.gather(*(pipe.call("PING") for _ in range(50)), return_exceptions=True)
        assert all(isinstance(r, OSError) for r in results), results
        assert len(attempts) == 1 and time.monotonic() - started < 1.0
    asyncio.run(main())


def test_password_user_and_database_from_the_url(redis_server):
    _, url = redis_server("--requirepass", "s3cret")
    port = url.rsplit(":", 1)[1].split("/")[0]

    async def main():
        pipe = Pipe(f"redis://:s3cret@127.0.0.1:{port}/3", 2, 2)
        assert await pipe.call("SET", "where", "db3") is not None
        wrong = Pipe(f"redis://:nope@127.0.0.1:{port}/0", 2, 2)
        with pytest.raises(RedisError, match="WRONGPASS|invalid password"):
            await wrong.call("PING")
    asyncio.run(main())
    assert redis.Redis(port=int(port), password="s3cret", db=3).get("where") == b"db3"
    assert redis.Redis(port=int(port), password="s3cret", db=0).get("where") is None


def test_calls_made_while_the_connection_is_being_set_up_run_in_the_urls_database(redis_server):
    """The handshake (AUTH, then SELECT) takes round trips; a call that came meanwhile must wait for
    it, not be written between AUTH and SELECT and so run in database 0."""
    _, url = redis_server("--requirepass", "s3cret")
    port = url.rsplit(":", 1)[1].split("/")[0]

    async def main():
        pipe = Pipe(f"redis://:s3cret@127.0.0.1:{port}/3", 2, 2)
        calls = []
        for i in range(200):  # one call per loop turn while the handshake's answers are on their way
            calls.append(asyncio.ensure_future(pipe.call("SET", f"k{i}", i)))
            await asyncio.sleep(0)
        assert await asyncio.gather(*calls) == [b"OK"] * 200
    asyncio.run(main())
    assert redis.Redis(port=int(port), password="s3cret", db=0).dbsize() == 0
    assert redis.Redis(port=int(port), password="s3cret", db=3).dbsize() == 200


def test_the_urls_tls_options_are_those_of_the_other_redis_clients(redis_server, tmp_path):
    """rediss://…?ssl_cert_reqs=none (a managed Redis' own certificate) or ?ssl_ca_certs=… mean the
    same to this client as to redis-py's (the /health ping, the management reads)."""
    if not shutil.which("openssl"):
        pytest.skip("needs openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    tls = free_port()
    redis_server("--tls-port", str(tls), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                 "--tls-auth-clients", "no")
    assert redis.Redis(port=tls, ssl=True, ssl_cert_reqs="none").ping()  # up with its plain port

    async def main():
        unchecked = Pipe(f"rediss://127.0.0.1:{tls}/0?ssl_cert_reqs=none", 2, 2)
        assert await unchecked.call("PING") == b"PONG"
        trusted = Pipe(f"rediss://localhost:{tls}/0?ssl_ca_certs={cert}", 2, 2)
        assert await trusted.call("PING") == b"PONG"
        with pytest.raises(ssl.SSLCertVerificationError):  # and verified by default
            await Pipe(f"rediss://localhost:{tls}/0", 2, 2).call("PING")
    asyncio.run(main())


def test_a_busy_loop_is_not_a_redis_that_does_not_answer(redis_server):
    """Under a burst one loop turn can outlast the timeout: answers that came meanwhile count."""
    _, url = redis_server()

    async def busy_turns(count: int, seconds: float):
        for _ in range(count):
            time.sleep(seconds)  # a turn spent on other requests' work
            await asyncio.sleep(0)

    async def main():
        pipe = Pipe(url, 0.1, 0.2)
        connecting = asyncio.ensure_future(pipe.call("SET", "k", "v"))
        await busy_turns(6, 0.1)  # the connect's few turns take 0.6 s in all
        assert await connecting == b"OK"
        calls = [asyncio.ensure_future(pipe.call("GET", "k")) for _ in range(3)]
        await busy_turns(4, 0.15)
        assert await asyncio.gather(*calls) == [b"v"] * 3
    asyncio.run(main())


def test_one_timer_watches_a_connections_calls(redis_server):
    """A timer per call (a heap entry made and cancelled each time) cost more than the rest of the
    call; answers come in order, so one timer on the oldest awaited call is enough."""
    _, url = redis_server()

    async def main():
        pipe = Pipe(url, 2, 2)
        await pipe.connect()
        loop = asyncio.get_running_loop()
        before = len(loop._scheduled)
        calls = [pipe.send("GET", f"k{i}") for i in range(500)]
        timers = len(loop._scheduled) - before
        assert await asyncio.gather(*calls) == [None] * 500
        return timers
    assert asyncio.run(main()) <= 1


def test_a_call_given_up_by_its_caller_while_redis_is_busy_does_not_fail_the_connection(redis_server):
    """Past a given-up call's deadline there is nobody to fail: the connection goes on, and its
    later calls are answered in step."""
    _, url = redis_server()

    async def main():
        pipe = Pipe(url, 0.3, 2)
        await pipe.connect()
        proto = pipe.proto
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pipe.script(SLOW, [], [400_000]), 0.05)  # Redis silent for 0.4 s
        await asyncio.sleep(0.6)  # past the given-up call's deadline (0.3 s), silent until 0.4 s
        assert not proto.lost
        assert await pipe.call("SET", "k", "v") == b"OK" and await pipe.call("GET", "k") == b"v"
        assert pipe.proto is proto
    asyncio.run(main())


def test_a_call_held_behind_given_up_calls_on_a_hung_redis_still_times_out(redis_server):
    """The calls written are given up by their callers, and Redis hangs: the next call waits in the
    buffer behind their answers, and must fail at its timeout all the same."""
    server, url = redis_server()

    async def main():
        pipe = Pipe(url, 0.3, 1)
        assert await pipe.call("PING") == b"PONG"
        server.send_signal(signal.SIGSTOP)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pipe.call("GET", "k"), 0.05)  # written, never answered, given up
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await pipe.call("GET", "k")
        return time.monotonic() - started
    try:
        assert asyncio.run(main()) < 1.0
    finally:
        server.send_signal(signal.SIGCONT)
