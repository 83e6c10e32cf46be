"""The tier table and provider selection (pure functions)."""
import pytest

from proxy.providers.base import ClientError
from proxy.routing import check_model_name, infer_tier, load_table, route


@pytest.fixture(scope="module")
def tiers():
    return load_table()


@pytest.mark.parametrize("model,provider,expected", [
    ("gpt-5.4-pro", "anthropic", "claude-opus-4-6"),
    ("gpt-5.4", "anthropic", "claude-opus-4-6"),
    ("gpt-4.1", "anthropic", "claude-sonnet-4-6"),
    ("gpt-4.1-mini", "anthropic", "claude-haiku-4-5-20251001"),
    ("gpt-4.1-nano", "anthropic", "claude-haiku-4-5-20251001"),
    ("o3", "anthropic", "claude-opus-4-6"),
    ("o3-mini", "anthropic", "claude-opus-4-6"),
    ("o4-mini", "anthropic", "claude-opus-4-6"),
    ("claude-opus-4-6", "openai", "gpt-5.4"),
    ("claude-sonnet-4-6", "openai", "gpt-4.1"),
    ("claude-haiku-4-5-20251001", "openai", "gpt-4.1-mini"),
    ("gpt-4.1", "ollama", "qwen2.5:14b"),
    ("gpt-5.4", "ollama", "llama3.3"),
    ("gpt-4.1-mini", "ollama", "phi4"),
    ("deepseek-r1", "anthropic", "claude-opus-4-6"),
    ("llama3.3", "openai", "gpt-5.4"),
    ("qwen2.5:14b", "anthropic", "claude-sonnet-4-6"),
    ("phi4", "gemini", "gemini-2.5-flash-lite"),
    ("claude-sonnet-4-6", "gemini", "gemini-2.5-flash"),
    ("gemini-2.5-pro", "anthropic", "claude-opus-4-6"),
    ("gpt-4.1-2025-04-14", "anthropic", "claude-sonnet-4-6"),
])
def test_it_maps_models_to_the_same_tier(tiers, model, provider, expected):
    r = route(model, provider, tiers)
    assert (r.provider, r.upstream_model, r.client_model) == (provider, expected, model)
    assert r.is_tier_inferred is False


@pytest.mark.parametrize("model,provider", [
    ("gpt-4.1", "openai"), ("claude-3-7-sonnet-latest", "anthropic"), ("gemini-3-flash-preview", "gemini"),
    ("mistral-nemo", "ollama"), ("qwen2.5:7b", "ollama"),
])
def test_it_passes_native_models_unchanged(tiers, model, provider):
    assert route(model, provider, tiers).upstream_model == model


@pytest.mark.parametrize("model,provider", [
    ("gpt-4.1", "openai"), ("o3", "openai"), ("o1-preview", "openai"), ("chatgpt-4o-latest", "openai"),
    ("claude-sonnet-4-6", "anthropic"), ("gemini-2.5-flash", "gemini"), ("llama3.3", "ollama"),
    ("phi4", "ollama"), ("deepseek-r1", "ollama"), ("qwen2.5:14b", "ollama"),
])
def test_it_picks_the_provider_from_the_model_name(tiers, model, provider):
    assert route(model, None, tiers).provider == provider


def test_it_reads_provider_slash_model(tiers):
    r = route("anthropic/claude-sonnet-4-6", None, tiers)
    assert (r.provider, r.upstream_model, r.client_model) == ("anthropic", "claude-sonnet-4-6",
                                                              "anthropic/claude-sonnet-4-6")
    r = route("anthropic/gpt-4.1", None, tiers)
    assert (r.provider, r.upstream_model) == ("anthropic", "claude-sonnet-4-6")


def test_the_header_wins_over_the_model_name(tiers):
    assert route("gpt-4.1", "Anthropic", tiers).provider == "anthropic"


def test_it_infers_the_tier_of_an_unknown_cross_provider_model(tiers):
    r = route("gpt-7-mini", "anthropic", tiers)
    assert r.upstream_model == "claude-haiku-4-5-20251001"
    assert r.is_tier_inferred and r.as_record()["tier_inferred"] is True
    assert "inferred" in r.reason
    assert route("claude-opus-5", "openai", tiers).upstream_model == "gpt-5.4"
    assert route("gpt-6", "anthropic", tiers).upstream_model == "claude-sonnet-4-6"


@pytest.mark.parametrize("name,tier", [("gpt-7-nano", "fast"), ("claude-haiku-9", "fast"),
                                       ("some-model-pro", "flagship"), ("o9", "flagship"),
                                       ("llama4:8b", "fast"), ("plain", "balanced")])
def test_infer_tier(name, tier):
    assert infer_tier(name) == tier


def test_it_refuses_an_unknown_provider_naming_the_accepted_ones(tiers):
    with pytest.raises(ClientError) as err:
        route("gpt-4.1", "azure", tiers)
    assert err.value.status == 400
    assert "openai, anthropic, gemini, ollama" in err.value.message


def test_it_refuses_a_model_no_provider_serves(tiers):
    with pytest.raises(ClientError) as err:
        route("totally-unknown", None, tiers)
    assert err.value.status == 404 and "x-smartflow-provider" in err.value.message


def test_the_route_memo_is_bounded(tiers):
    for i in range(10_050):
        route(f"gpt-flood-{i}", None, tiers)
    assert len(tiers.memo) <= 10_001


@pytest.mark.parametrize("name", ["gpt-4.1", "qwen2.5:14b", "anthropic/claude-sonnet-4-6", "gemini-2.5-flash",
                                  "meta-llama/Llama-3.3-70B", "hf.co/bartowski/Llama-3.2-3B-Instruct-GGUF:Q4_K_M",
                                  "llama3.3:70b-instruct-q4_K_M", "model@2025-01-01", "phi4+lora", "o3", "a" * 200])
def test_it_accepts_real_model_names(name):
    assert check_model_name(name) == name


@pytest.mark.parametrize("name", [None, "", 7, ["gpt-4.1"], "gemini/../../v1beta/cachedContents?x=", "a/../b",
                                  "a/./b", "a//b", "a/", "/a", "..", "gpt-4.1\r\n", "gpt-4.1\n", "gpt 4.1", "gpt\t4",
                                  "gpt-4.1?x", "gpt#1", "gpt%2e", "ǵpt", "-x", ".x", "a" * 201, "gpt\x00"])
def test_it_refuses_what_is_not_a_model_name(name):
    with pytest.raises(ClientError) as err:
        check_model_name(name)
    assert err.value.status == 400 and err.value.param == "model"
    assert "\n" not in err.value.message and "\x00" not in err.value.message  # safe to log and store
