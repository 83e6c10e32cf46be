"""The semantic index of MetaCache: paraphrases hit, other texts miss, scopes never mix, memory stays bounded.

The text pairs are chosen by the similarities wordllama (l2_supercat_256)
really gives them, measured when this was written:
  0.9917  "What is the capital of France?" / "What's the capital of France?"
  0.9887  "How do I reverse a list in Python?" / "How can I reverse a list in Python?"
  0.9741  "How do I reverse a list in Python?" / "What is the way to reverse a Python list?"
  0.9716  "Explain quantum entanglement in simple terms." / "Explain quantum entanglement simply."
  0.9045  "What is the capital of France?" / "Tell me the capital of France."  (a paraphrase below 0.95)
  0.8847  "How do I reverse a list in Python?" / "How do I reverse a string in Python?"
  0.4392  "What is the capital of France?" / "What is the capital of Germany?"
  0.0133  "What is the capital of France?" / "How do I reverse a list in Python?"
"""
import asyncio
import os
import uuid

import pytest

from proxy.cache import semantic

PARAPHRASES = [
    ("What is the capital of France?", "What's the capital of France?"),
    ("How do I reverse a list in Python?", "How can I reverse a list in Python?"),
    ("How do I reverse a list in Python?", "What is the way to reverse a Python list?"),
    ("Explain quantum entanglement in simple terms.", "Explain quantum entanglement simply."),
]
BELOW = [
    ("What is the capital of France?", "Tell me the capital of France."),
    ("How do I reverse a list in Python?", "How do I reverse a string in Python?"),
    ("What is the capital of France?", "What is the capital of Germany?"),
    ("What is the capital of France?", "How do I reverse a list in Python?"),
]
UNRELATED = [
    "What is the capital of France?",
    "How do I reverse a list in Python?",
    "Explain quantum entanglement in simple terms.",
    "Write a haiku about autumn leaves.",
    "Convert 10 miles to kilometers.",
    "Summarize the plot of Hamlet.",
    "What causes the seasons on Earth?",
    "Give me a recipe for pancakes.",
    "How does TCP congestion control work?",
    "List the planets of the solar system.",
]

REDIS_URL = os.environ.get("REDIS_URL")
needs_redis = pytest.mark.skipif(not REDIS_URL, reason="the Redis backend needs REDIS_URL")


@pytest.fixture
def redis_index(settings):
    index = semantic.RedisIndex(REDIS_URL, f"{settings.SMARTFLOW_CACHE_PREFIX}:{uuid.uuid4().hex}")
    yield index
    index.clear()


@pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis)])
def index(request):
    if request.param == "memory":
        return semantic.MemoryIndex()
    return request.getfixturevalue("redis_index")


@pytest.mark.asyncio
@pytest.mark.parametrize("stored, asked", PARAPHRASES)
async def test_it_finds_a_paraphrase_above_the_threshold(index, stored, asked):
    await index.add("team-a|openai|gpt-4o", stored, "entry-1")
    await index.add("team-a|openai|gpt-4o", "Give me a recipe for pancakes.", "entry-2")
    found = await index.search("team-a|openai|gpt-4o", asked)
    assert found is not None
    key, similarity = found
    assert key == "entry-1"
    assert 0.95 <= similarity <= 1.0


@pytest.mark.asyncio
@pytest.mark.parametrize("stored, asked", BELOW)
async def test_it_misses_texts_below_the_threshold(index, stored, asked):
    await index.add("scope", stored, "entry-1")
    assert await index.search("scope", asked) is None


@pytest.mark.asyncio
async def test_the_threshold_is_the_setting(index, settings):
    await index.add("scope", "What is the capital of France?", "entry-1")
    assert await index.search("scope", "Tell me the capital of France.") is None
    settings.SMARTFLOW_CACHE_SEMANTIC_THRESHOLD = 0.9
    key, similarity = await index.search("scope", "Tell me the capital of France.")
    assert key == "entry-1" and 0.9 <= similarity < 0.95


@pytest.mark.asyncio
async def test_it_answers_the_most_similar_entry(index):
    for n, text in enumerate(UNRELATED):
        await index.add("scope", text, f"entry-{n}")
    for n, text in enumerate(UNRELATED):
        key, similarity = await index.search("scope", text)
        assert key == f"entry-{n}" and similarity > 0.999


@pytest.mark.asyncio
async def test_scopes_never_mix(index):
    await index.add("team-a|openai|gpt-4o|t=0", "What is the capital of France?", "a-entry")
    assert await index.search("team-b|openai|gpt-4o|t=0", "What is the capital of France?") is None
    assert await index.search("team-a|openai|gpt-4o|t=1", "What is the capital of France?") is None
    await index.add("team-b|openai|gpt-4o|t=0", "What's the capital of France?", "b-entry")
    assert (await index.search("team-a|openai|gpt-4o|t=0", "What's the capital of France?"))[0] == "a-entry"
    assert (await index.search("team-b|openai|gpt-4o|t=0", "What is the capital of France?"))[0] == "b-entry"


@pytest.mark.asyncio
async def test_an_expired_entry_is_not_found(index):
    await index.add("scope", "What is the capital of France?", "short", ttl_s=0.3)
    assert (await index.search("scope", "What is the capital of France?"))[0] == "short"
    await asyncio.sleep(0.4)
    assert await index.search("scope", "What is the capital of France?") is None


@pytest.mark.asyncio
async def test_it_keeps_the_newest_vectors_of_a_scope(index, monkeypatch):
    monkeypatch.setattr(semantic, "PER_SCOPE", 4)
    for n, text in enumerate(UNRELATED):
        await index.add("scope", text, f"entry-{n}")
    assert (await index.stats())["entries"] == 4
    for n, text in enumerate(UNRELATED):
        found = await index.search("scope", text)
        assert (found and found[0]) == (f"entry-{n}" if n >= len(UNRELATED) - 4 else None)


@pytest.mark.asyncio
async def test_the_memory_index_is_bounded_in_bytes(monkeypatch):
    index = semantic.MemoryIndex()
    monkeypatch.setattr(semantic, "PER_SCOPE", 8)
    one_scope = semantic._Scope()
    for _ in range(8):
        one_scope.add(await semantic.embedder.aembed("x"), 0, "k")
    monkeypatch.setattr(semantic, "MAX_BYTES", 3 * one_scope.nbytes)
    for scope in range(10):
        for text in UNRELATED[:8]:
            await index.add(f"scope-{scope}", text, f"{scope}-{text}")
    # A search touches a scope: it is kept over the older ones.
    assert await index.search("scope-7", UNRELATED[0]) is not None
    await index.add("scope-10", UNRELATED[0], "newest")
    stats = await index.stats()
    assert stats["bytes"] <= 3 * one_scope.nbytes and stats["entries"] == 2 * 8 + 1
    assert await index.search("scope-7", UNRELATED[0]) is not None
    assert await index.search("scope-10", UNRELATED[0]) is not None
    assert await index.search("scope-0", UNRELATED[0]) is None


@pytest.mark.asyncio
async def test_clear_empties_it(index):
    await index.add("scope", "What is the capital of France?", "entry-1")
    assert (await index.stats())["entries"] == 1
    await index.aclear()
    assert await index.search("scope", "What is the capital of France?") is None
    await index.add("scope", "What is the capital of France?", "entry-1")
    index.clear()
    assert (await index.stats())["entries"] == 0
    assert await index.search("scope", "What is the capital of France?") is None


@pytest.mark.asyncio
async def test_only_the_end_of_a_long_text_is_embedded(index):
    ending = "What is the capital of France? " * (semantic.MAX_CHARS // 10)
    await index.add("scope", "Some long system prompt. " * 2000 + ending, "entry-1")
    key, similarity = await index.search("scope", "How do I reverse a list in Python? " * 2000 + ending)
    assert key == "entry-1" and similarity > 0.999


@needs_redis
@pytest.mark.asyncio
async def test_redis_lists_expire_with_the_cache(redis_index, settings):
    import redis.asyncio

    settings.SMARTFLOW_CACHE_TTL = 120
    await redis_index.add("scope", "What is the capital of France?", "entry-1")
    await redis_index.add("scope", "How do I reverse a list in Python?", "entry-2", ttl_s=600)
    await redis_index.add("scope", "Write a haiku about autumn leaves.", "entry-3", ttl_s=30)
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        for key in redis_index._keys("scope"):
            assert 590 <= await client.ttl(key) <= 600  # the longest-lived entry's, never shortened
            assert await client.llen(key) == 3
    finally:
        await client.aclose()


@needs_redis
@pytest.mark.asyncio
async def test_two_processes_share_the_redis_index(redis_index):
    other = semantic.RedisIndex(redis_index.url, redis_index.prefix.removesuffix(":cache:semantic:"))
    await redis_index.add("scope", "What is the capital of France?", "entry-1")
    key, similarity = await other.search("scope", "What's the capital of France?")
    assert key == "entry-1" and similarity > 0.95


def test_index_is_the_process_index_for_the_settings(settings):
    settings.REDIS_URL = ""
    memory = semantic.index()
    assert isinstance(memory, semantic.MemoryIndex) and semantic.index() is memory
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    shared = semantic.index()
    assert isinstance(shared, semantic.RedisIndex) and semantic.index() is shared
    assert shared.prefix.startswith(settings.SMARTFLOW_CACHE_PREFIX + ":")
    settings.REDIS_URL = ""
    assert isinstance(semantic.index(), semantic.MemoryIndex)


@pytest.mark.asyncio
async def test_a_miss_embeds_its_text_once(monkeypatch):
    model = semantic.embedder.model()
    calls = []
    real_embed = model.embed
    monkeypatch.setattr(model, "embed", lambda text: calls.append(text) or real_embed(text))
    index = semantic.MemoryIndex()
    text = f"A question asked for the first time: {uuid.uuid4()}"
    await index.add("scope", "Something else entirely.", "other")
    calls.clear()
    assert await index.search("scope", text) is None
    await index.add("scope", text, "entry-1")
    assert calls == [text]
    assert (await index.search("scope", text))[0] == "entry-1"
