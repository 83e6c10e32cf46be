"""Hypothesis strategies for near-valid request bodies: a valid skeleton with mutated types and values.

Random JSON alone stops at the first check; these reach the translation code behind it.
"""
from hypothesis import strategies as st

# Text without lone surrogates (not encodable as UTF-8 JSON, so no client can send them).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
WORDS = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False, allow_infinity=False),
                    TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)
MODELS = st.sampled_from(["gpt-4.1", "gpt-5.4", "o3", "claude-sonnet-4-6", "claude-opus-4-7", "gemini-2.5-flash",
                          "gemini-3-pro-preview", "qwen2.5:14b", "llama3.3", "anthropic/claude-haiku-4-5",
                          "ollama/meta-llama/Llama-3.3-70B", "gpt-7-mini", "mystery-model"])
PROVIDER_HEADERS = st.sampled_from([None, "openai", "anthropic", "gemini", "ollama"])
DATA_URL = st.sampled_from(["data:image/png;base64,iVBORw0KGgo=", "data:application/pdf;base64,JVBERi0=",
                            "data:text/plain;base64,aGk=", "https://example.com/a.png", "ftp://x", ""])


def mutated(good, wrong=JSON, odds=12):
    """Mostly the good value; one time in `odds`, any JSON value in its place (so a body
    usually carries a mutation or two, not one in every field)."""
    # Hypothesis leans towards small integers, so the rare branch is the largest roll.
    return st.integers(0, odds - 1).flatmap(lambda roll: wrong if roll == odds - 1 else good)


def some(required=None, **fields):
    """An object with the required fields and any subset of the others."""
    return st.fixed_dictionaries(required or {}, optional=fields)


def mutated_model():
    return mutated(MODELS, st.one_of(JSON, TEXT.map(lambda t: "gemini/" + t), st.just("gemini/../../x?y=")))


# --- OpenAI Chat Completions ------------------------------------------------------

def openai_part():
    kind = st.sampled_from(["text", "image_url", "input_audio", "file", "refusal", "video"])
    return st.one_of(
        some(type=mutated(kind), text=mutated(TEXT)),
        some(type=mutated(st.just("image_url")), image_url=mutated(st.one_of(
            some(url=mutated(DATA_URL), detail=mutated(st.sampled_from(["auto", "low"]))), DATA_URL))),
        some(type=st.just("input_audio"), input_audio=mutated(some(data=mutated(TEXT),
                                                                  format=mutated(st.sampled_from(["wav", "mp3", "ogg"]))))),
        some(type=st.just("file"), file=mutated(some(file_data=mutated(DATA_URL), filename=mutated(TEXT),
                                                     file_id=mutated(TEXT)))),
        mutated(st.fixed_dictionaries({"type": kind})),
    )


def openai_tool_call():
    return mutated(some(id=mutated(TEXT), type=mutated(st.just("function")),
                        function=mutated(some(name=mutated(TEXT), arguments=mutated(
                            st.sampled_from(["{}", '{"city": "Paris"}', "not json", "[1]", '{"a":' * 30 + "1" + "}" * 30,
                             '{"a":' * 300 + "1" + "}" * 300, '{"a":' * 5000 + "1" + "}" * 5000]))))))


def openai_message():
    role = mutated(st.sampled_from(["user", "assistant", "user", "system", "developer", "tool", "function"]))
    content = mutated(st.one_of(WORDS, st.lists(openai_part(), max_size=3), st.none()))
    return mutated(st.fixed_dictionaries({"role": role, "content": content}, optional={
        "name": mutated(TEXT), "tool_call_id": mutated(TEXT),
        "tool_calls": mutated(st.lists(openai_tool_call(), max_size=2)), "refusal": mutated(TEXT)}))


def openai_tool():
    function = some(name=mutated(st.sampled_from(["get_weather", "f", ""])), description=mutated(TEXT),
                    parameters=mutated(st.just({"type": "object", "properties": {"city": {"type": "string"}}})),
                    strict=mutated(st.booleans()))
    return mutated(some(type=mutated(st.sampled_from(["function", "custom", "web_search"])), function=mutated(function)))


def openai_body():
    choice = st.one_of(st.sampled_from(["auto", "none", "required", "bogus"]),
                       some(type=mutated(st.just("function")), function=mutated(some(name=mutated(TEXT)))),
                       some(type=st.just("allowed_tools"), allowed_tools=mutated(some(
                           mode=mutated(st.sampled_from(["auto", "required"])),
                           tools=mutated(st.lists(mutated(some(type=st.just("function"), name=mutated(TEXT),
                                                               function=mutated(some(name=mutated(TEXT))))),
                                                  max_size=2))))))
    response_format = some(type=mutated(st.sampled_from(["text", "json_object", "json_schema"])),
                           json_schema=mutated(some(name=TEXT, schema=mutated(st.just({"type": "object"})))))
    return st.fixed_dictionaries({"model": mutated_model(),
                                  "messages": mutated(st.lists(openai_message(), min_size=1, max_size=4))}, optional={
        "stream": mutated(st.booleans()), "temperature": mutated(st.floats(0, 2)), "top_p": mutated(st.floats(0, 1)),
        "max_tokens": mutated(st.integers(1, 10_000)), "max_completion_tokens": mutated(st.integers(1, 10_000)),
        "n": mutated(st.integers(1, 3)), "stop": mutated(st.one_of(TEXT, st.lists(mutated(TEXT), max_size=5))),
        "tools": mutated(st.lists(openai_tool(), max_size=2)), "tool_choice": mutated(choice),
        "parallel_tool_calls": mutated(st.booleans()), "response_format": mutated(response_format),
        "reasoning_effort": mutated(st.sampled_from(["none", "minimal", "low", "medium", "high", "xhigh", "max"])),
        "stream_options": mutated(some(include_usage=mutated(st.booleans()))), "seed": mutated(st.integers()),
        "user": mutated(TEXT), "metadata": mutated(st.dictionaries(TEXT, TEXT, max_size=2)),
        "presence_penalty": mutated(st.floats(-2, 2)), "logit_bias": mutated(st.just({"50256": -100})),
        "logprobs": mutated(st.booleans()), "top_logprobs": mutated(st.integers(0, 5)), "extra": JSON,
    })


# --- Anthropic Messages -------------------------------------------------------------

def anthropic_source():
    return mutated(st.one_of(
        some(type=mutated(st.just("base64")), media_type=mutated(st.sampled_from(["image/png", "application/pdf",
                                                                                "image/bmp"])),
             data=mutated(st.just("iVBORw0KGgo="))),
        some(type=st.just("url"), url=mutated(st.sampled_from(["https://example.com/a.pdf", ""]))),
        some(type=st.just("file"), file_id=mutated(TEXT)),
        some(type=st.just("text"), media_type=st.just("text/plain"), data=mutated(TEXT)),
        some(type=st.just("content"), content=mutated(st.one_of(TEXT, st.lists(
            mutated(some(type=mutated(st.just("text")), text=mutated(TEXT))), max_size=2)))),
    ))


def anthropic_block():
    kind = st.sampled_from(["text", "image", "document", "tool_use", "tool_result", "thinking",
                            "redacted_thinking", "search_result", "server_tool_use"])
    text_block = some({"type": mutated(st.just("text")), "text": mutated(WORDS)},
                      cache_control=mutated(st.just({"type": "ephemeral"})))
    return mutated(st.one_of(
        text_block,
        some({"type": mutated(st.sampled_from(["image", "document"])), "source": anthropic_source()},
             title=mutated(TEXT)),
        some({"type": mutated(st.just("tool_use")), "id": mutated(st.sampled_from(["toolu_1", "call 1"])),
              "name": mutated(TEXT)}, input=mutated(st.dictionaries(TEXT, JSON, max_size=2))),
        some({"type": mutated(st.just("tool_result")), "tool_use_id": mutated(st.just("toolu_1"))},
             is_error=mutated(st.booleans()),
             content=mutated(st.one_of(TEXT, st.lists(st.one_of(text_block, some(type=st.just("image"),
                                                                                 source=anthropic_source())),
                                                      max_size=2)))),
        some({"type": kind}, thinking=TEXT, signature=TEXT, source=TEXT, title=TEXT, content=JSON),
    ))


def anthropic_message():
    return mutated(st.fixed_dictionaries({
        "role": mutated(st.sampled_from(["user", "assistant"]), st.one_of(JSON, st.just("system"))),
        "content": mutated(st.one_of(WORDS, st.lists(anthropic_block(), min_size=1, max_size=3)))}))


def anthropic_tool():
    return mutated(st.one_of(
        some(name=mutated(st.sampled_from(["get_weather", ""])), description=mutated(TEXT),
             input_schema=mutated(st.just({"type": "object", "properties": {}}))),
        some(type=st.sampled_from(["custom", "web_search_20250305", "bash_20250124", "text_editor_20250728",
                                   "computer_20250124", "code_execution_20250825", "mystery"]),
             name=mutated(TEXT), input_schema=mutated(st.just({"type": "object"}))),
    ))


def anthropic_body():
    return st.fixed_dictionaries({"model": mutated_model(), "max_tokens": mutated(st.integers(1, 100_000)),
                                  "messages": mutated(st.lists(anthropic_message(), min_size=1, max_size=4))}, optional={
        "system": mutated(st.one_of(TEXT, st.lists(mutated(some({"type": mutated(st.just("text")),
                                                                  "text": mutated(TEXT)})), max_size=2))),
        "stream": mutated(st.booleans()), "temperature": mutated(st.floats(0, 1)), "top_p": mutated(st.floats(0, 1)),
        "top_k": mutated(st.integers(0, 100)), "stop_sequences": mutated(st.lists(mutated(TEXT), max_size=5)),
        "tools": mutated(st.lists(anthropic_tool(), max_size=2)),
        "tool_choice": mutated(some(type=mutated(st.sampled_from(["auto", "any", "none", "tool", "x"])),
                                    name=mutated(TEXT), disable_parallel_tool_use=mutated(st.booleans()))),
        "thinking": mutated(some(type=mutated(st.sampled_from(["enabled", "adaptive", "disabled"])),
                                 budget_tokens=mutated(st.integers(0, 40_000)))),
        "output_config": mutated(some(effort=mutated(st.sampled_from(["low", "high"])),
                                      format=mutated(some(type=mutated(st.just("json_schema")),
                                                          schema=mutated(st.just({"type": "object"})))))),
        "metadata": mutated(some(user_id=mutated(TEXT))), "extra": JSON,
    })
