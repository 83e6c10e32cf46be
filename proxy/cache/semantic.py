"""The semantic index of MetaCache: finds a cached entry by the meaning of the prompt (SMARTFLOW_CACHE=semantic).

Embeddings come from wordllama, whose weights and tokenizer ship inside the
pip package: nothing is downloaded at run time and nothing is written to
~/.cache. The model loads once per process, on first use, and every embedding
runs on one dedicated thread, never on the event loop.

Vectors are kept per scope (the caller's hash of team, provider, model and
answer-changing parameters), so a search only ever compares texts of the same
scope: one team's prompt never finds another team's entry. Only the newest
PER_SCOPE vectors of a scope are kept; in process, MAX_BYTES bounds them all.

wordllama averages token vectors, so word order is lost: "Convert 10 miles to
kilometers." and "Convert 10 kilometers to miles." have similarity 1.0, and
"with alcohol" / "without alcohol" 0.96. No threshold guards against that;
the strict default (0.95) keeps such near-duplicates the main risk.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from django.conf import settings

from proxy.redis_sync import loop_client

log = logging.getLogger(__name__)

# What is embedded: the last MAX_CHARS characters of the text. The end of a
# conversation is the question being asked; embedding costs ~0.6 µs per
# character (one thread), so this caps one embedding at ~1.2 ms.
MAX_CHARS = 2048
# A miss embeds its text to search, then again to add it: the newest vectors are remembered.
RECENT = 256
PER_SCOPE = 1000  # newest vectors kept per scope
MAX_BYTES = 32 * 1024 * 1024  # in-process index: every scope's vectors together
REDIS_TIMEOUT = 0.5  # seconds a Redis call may take before the search is a miss
REDIS_RETRY_AFTER = 1.0  # after a Redis failure, searches skip Redis this long

DIM = 256  # wordllama's l2_supercat_256
# One Redis list element: expiry (Unix time, float64) then the vector (float32).
RECORD = np.dtype([("expires", "<f8"), ("vector", "<f4", (DIM,))])


# --- the model ----------------------------------------------------------------------
class _Embedder:
    """The process's wordllama model and the one thread that runs it."""

    def __init__(self):
        self._model = None
        self._failed = False
        self._pool = None
        self._pid = None
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, np.ndarray | None] = OrderedDict()

    def pool(self) -> ThreadPoolExecutor:
        # Threads do not survive a fork: a forked worker starts its own.
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smartflow-embed")
                    self._model, self._pid = None, os.getpid()
                    self._recent.clear()
        return self._pool

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool(), fn, *args)

    def model(self):
        """Runs on the embedding thread, so only one load ever happens."""
        if self._model is None and not self._failed:
            try:
                from pathlib import Path

                import wordllama

                # The package holds weights/ and tokenizers/ itself; pointing
                # cache_dir at it is what keeps the loader from downloading.
                self._model = wordllama.WordLlama.load(
                    cache_dir=Path(wordllama.__file__).parent, disable_download=True)
            except Exception:
                self._failed = True
                log.exception("semantic cache: the wordllama model could not be loaded; semantic lookups are off")
        return self._model

    def embed(self, text: str) -> np.ndarray | None:
        """The unit vector of text's last MAX_CHARS characters; None when it has none (empty text)."""
        model = self.model()
        if model is None:
            return None
        text = text[-MAX_CHARS:]
        if text in self._recent:
            self._recent.move_to_end(text)
            return self._recent[text]
        # The tokenizer refuses lone surrogates; a prompt must not make it raise.
        vector = model.embed(text.encode("utf-8", "replace").decode("utf-8"))[0].astype(np.float32)
        norm = float(np.linalg.norm(vector))
        vector = vector / norm if norm and np.isfinite(norm) else None
        self._recent[text] = vector
        if len(self._recent) > RECENT:
            self._recent.popitem(last=False)
        return vector

    async def aembed(self, text: str) -> np.ndarray | None:
        return await self.run(self.embed, text)

    def warm(self):
        """Starts loading the model on its thread and returns at once. Loading holds the GIL for
        ~0.1 s (safetensors, tokenizer), which stalls the event loop once: call this at startup
        in semantic mode so no request waits for it."""
        self.pool().submit(self.model)


embedder = _Embedder()


def _threshold() -> float:
    return settings.SMARTFLOW_CACHE_SEMANTIC_THRESHOLD


def _ttl(ttl_s: float | None) -> float:
    return ttl_s if ttl_s is not None else getattr(settings, "SMARTFLOW_CACHE_TTL", 3600)


def _best(vectors: np.ndarray, expires: np.ndarray, keys: list, query: np.ndarray) -> tuple[str, float] | None:
    """The live entry most similar to query, if it reaches the threshold: one matrix-vector product."""
    if not len(keys):
        return None
    similarity = vectors @ query
    similarity[expires <= time.time()] = -1.0
    best = int(np.argmax(similarity))
    score = min(float(similarity[best]), 1.0)  # float32 rounding can overshoot 1
    return (keys[best], score) if score >= _threshold() else None


class SemanticIndex:
    """The interface both backends keep."""

    backend = ""

    async def search(self, scope: str, text: str) -> tuple[str, float] | None:
        """The entry key of the most similar text stored in scope, and its cosine similarity, if ≥ the threshold."""
        raise NotImplementedError

    async def add(self, scope: str, text: str, entry_key: str, ttl_s: float | None = None) -> None:
        """Remembers text's vector for entry_key in scope for ttl_s seconds (default SMARTFLOW_CACHE_TTL)."""
        raise NotImplementedError

    async def stats(self) -> dict:
        """{"entries": vectors stored, "bytes": their size}."""
        raise NotImplementedError

    def clear(self) -> None:
        raise NotImplementedError

    async def aclear(self) -> None:
        raise NotImplementedError


# --- in process ---------------------------------------------------------------------
class _Scope:
    """A ring of the newest PER_SCOPE vectors of one scope; grows by doubling up to it."""

    def __init__(self):
        capacity = min(8, PER_SCOPE)
        self.vectors = np.empty((capacity, DIM), np.float32)
        self.expires = np.empty(capacity, np.float64)
        self.keys: list[str] = []
        self.next = 0  # the slot the next vector takes once the ring is full

    @property
    def nbytes(self) -> int:
        return self.vectors.nbytes + self.expires.nbytes

    def add(self, vector: np.ndarray, expires: float, entry_key: str):
        n, capacity = len(self.keys), len(self.vectors)
        if n == capacity and capacity < PER_SCOPE:
            capacity = min(capacity * 2, PER_SCOPE)
            self.vectors = np.resize(self.vectors, (capacity, DIM))
            self.expires = np.resize(self.expires, capacity)
        if n < capacity:
            slot = n
            self.keys.append(entry_key)
        else:  # full: the oldest goes
            slot, self.next = self.next, (self.next + 1) % capacity
            self.keys[slot] = entry_key
        self.vectors[slot] = vector
        self.expires[slot] = expires


class _MemoryState:
    def __init__(self):
        self.scopes: OrderedDict[str, _Scope] = OrderedDict()  # least recently used first
        self.nbytes = 0


class MemoryIndex(SemanticIndex):
    """Per-process index. Every read and write runs on the embedding thread, so they never race."""

    backend = "memory"

    def __init__(self):
        self._state = _MemoryState()

    def _search(self, scope: str, text: str):
        state = self._state
        entries = state.scopes.get(scope)
        if entries is None:
            return None
        query = embedder.embed(text)
        if query is None:
            return None
        state.scopes.move_to_end(scope)
        n = len(entries.keys)
        return _best(entries.vectors[:n], entries.expires[:n], entries.keys, query)

    def _add(self, scope: str, text: str, entry_key: str, ttl_s: float):
        vector = embedder.embed(text)
        if vector is None:
            return
        state = self._state  # clear() swaps the state: an add racing it lands in the old one
        entries = state.scopes.get(scope)
        if entries is None:
            entries = state.scopes[scope] = _Scope()
            state.nbytes += entries.nbytes
        state.scopes.move_to_end(scope)
        before = entries.nbytes
        entries.add(vector, time.time() + ttl_s, entry_key)
        state.nbytes += entries.nbytes - before
        while state.nbytes > MAX_BYTES and len(state.scopes) > 1:
            _, evicted = state.scopes.popitem(last=False)
            state.nbytes -= evicted.nbytes

    async def search(self, scope, text):
        return await embedder.run(self._search, scope, text)

    async def add(self, scope, text, entry_key, ttl_s=None):
        await embedder.run(self._add, scope, text, entry_key, _ttl(ttl_s))

    def _stats(self):
        state = self._state
        return {"entries": sum(len(s.keys) for s in state.scopes.values()), "bytes": state.nbytes}

    async def stats(self):
        return await embedder.run(self._stats)

    def clear(self):
        self._state = _MemoryState()

    async def aclear(self):
        self.clear()


# --- Redis --------------------------------------------------------------------------
class RedisIndex(SemanticIndex):
    """Shared by every process: per scope two Redis lists, records (expiry + vector) and entry keys,
    newest first, trimmed to PER_SCOPE and expiring with the newest entry. A search fetches
    both in one round trip and compares in process; an add is one MULTI round trip."""

    backend = "redis"

    def __init__(self, url: str, prefix: str):
        self.url = url
        self.prefix = f"{prefix}:cache:semantic:"
        self._clients: dict = {}  # event loop -> (client, semaphore): a client belongs to one loop
        self._down_until = 0.0

    def _client(self):
        return loop_client(self._clients, self.url, REDIS_TIMEOUT, REDIS_TIMEOUT)[0]

    def _turns(self) -> asyncio.Semaphore:  # at most MAX_CONNECTIONS calls at once (redis_sync.loop_client)
        return loop_client(self._clients, self.url, REDIS_TIMEOUT, REDIS_TIMEOUT)[1]

    def _keys(self, scope: str) -> tuple[bytes, bytes]:
        key = (self.prefix + scope).encode("utf-8", "surrogatepass")
        return key + b":v", key + b":k"

    def _is_down(self) -> bool:
        return time.monotonic() < self._down_until

    def _failed(self, what: str, error: BaseException):
        from redis.exceptions import ConnectionError, TimeoutError

        if isinstance(error, (ConnectionError, TimeoutError, OSError, asyncio.TimeoutError)):
            self._down_until = time.monotonic() + REDIS_RETRY_AFTER
            log.warning("semantic cache: Redis unavailable (%s: %r); requests go on without it", what, error)
        else:
            log.error("semantic cache: %s failed: %r", what, error)

    async def _fetch(self, scope: str):
        vkey, kkey = self._keys(scope)
        pipe = self._client().pipeline(transaction=False)
        pipe.lrange(vkey, 0, PER_SCOPE - 1)
        pipe.lrange(kkey, 0, PER_SCOPE - 1)
        async with self._turns():
            return await asyncio.wait_for(pipe.execute(), REDIS_TIMEOUT)

    async def search(self, scope, text):
        if self._is_down():
            return None
        # The round trip overlaps the embedding.
        query, fetched = await asyncio.gather(embedder.aembed(text), self._fetch(scope), return_exceptions=True)
        if isinstance(fetched, Exception):
            self._failed("search", fetched)
            return None
        if isinstance(query, BaseException):  # the embedding never fails on a str: a bug, let it show
            raise query
        records, keys = fetched
        n = min(len(records), len(keys))  # equal unless a trim raced the fetch
        if query is None or not n:
            return None
        try:
            rows = np.frombuffer(b"".join(records[:n]), dtype=RECORD)
        except ValueError:  # not our records (another dimension, foreign data): no hit
            return None
        found = _best(rows["vector"], rows["expires"], keys[:n], query)
        return (found[0].decode("utf-8", "surrogatepass"), found[1]) if found else None

    async def add(self, scope, text, entry_key, ttl_s=None):
        if self._is_down():
            return
        ttl = _ttl(ttl_s)
        vector = await embedder.aembed(text) if ttl > 0 else None
        if vector is None:
            return
        record = np.array([(time.time() + ttl, vector)], dtype=RECORD).tobytes()
        seconds = max(1, int(ttl + 0.999))
        try:
            pipe = self._client().pipeline(transaction=True)  # both lists change together
            for key, value in zip(self._keys(scope), (record, entry_key.encode("utf-8", "surrogatepass"))):
                pipe.lpush(key, value)
                pipe.ltrim(key, 0, PER_SCOPE - 1)
                # The lists live as long as their longest-lived entry.
                pipe.expire(key, seconds, nx=True)
                pipe.expire(key, seconds, gt=True)
            async with self._turns():
                await asyncio.wait_for(pipe.execute(), REDIS_TIMEOUT)
        except Exception as error:
            self._failed("add", error)

    async def _scan(self, client):
        return [key async for key in client.scan_iter(match=f"{self.prefix}*", count=1000)]

    async def stats(self):
        client = self._client()
        keys = [k for k in await self._scan(client) if k.endswith(b":v")]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.llen(key)
        entries = sum(await pipe.execute()) if keys else 0
        return {"entries": entries, "bytes": entries * RECORD.itemsize}

    async def aclear(self):
        client = self._client()
        keys = await self._scan(client)
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start:start + 1000])

    def clear(self):
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start:start + 1000])
        finally:
            client.close()


# --- the process's index ------------------------------------------------------------
_index: tuple[tuple, SemanticIndex] | None = None
_index_lock = threading.Lock()


def index() -> SemanticIndex:
    """The process's semantic index: in Redis when REDIS_URL is set, in process otherwise."""
    global _index
    config = (settings.REDIS_URL, settings.SMARTFLOW_CACHE_PREFIX)
    current = _index
    if current is None or current[0] != config:
        with _index_lock:
            if _index is None or _index[0] != config:
                url, prefix = config
                _index = (config, RedisIndex(url, prefix) if url else MemoryIndex())
            current = _index
    return current[1]
