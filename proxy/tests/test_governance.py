"""Guardrails, limits and routing policies on one request: each applies to whichever target serves."""
import json
import uuid
from decimal import Decimal

import anthropic
import openai
import pytest

from conftest import MASTER_KEY
from proxy.auth import forget_keys
from proxy.models import GuardrailPolicy, Team, VirtualKey
from proxy.policies.guardrails import policies as guardrail_policies

EMAIL = "jane.roe@example.org"
TARGETS = [{"provider": "anthropic", "model": "claude-sonnet-4-6"}, {"provider": "openai", "model": "gpt-4.1"}]


@pytest.fixture
def redact_pii(gateway):
    GuardrailPolicy.objects.create(name="pii", kind="pii", action="redact", on="both")
    guardrail_policies.invalidate()
    guardrail_policies.get_sync()
    yield
    GuardrailPolicy.objects.all().delete()
    guardrail_policies.invalidate()
    guardrail_policies.get_sync()


def sent(fake, provider) -> str:
    return " ".join(r.raw.decode() for r in fake.requests_for(provider))


@pytest.mark.parametrize("client", ["openai", "anthropic"])
def test_a_failover_target_gets_the_redacted_prompt(gateway, routing_policy, redact_pii, fake_upstream, client):
    routing_policy("fo", "failover", TARGETS, retry={"attempts": 0})
    fake_upstream.script("anthropic", status=529)
    prompt = f"Write to {EMAIL} please"
    if client == "openai":
        sdk = openai.OpenAI(base_url=gateway.proxy_url + "/v1", api_key=MASTER_KEY, max_retries=0)
        raw = sdk.chat.completions.with_raw_response.create(model="gpt-4.1",
                                                             messages=[{"role": "user", "content": prompt}])
    else:  # an Anthropic client whose first target is Anthropic: its own body must not go out unredacted
        sdk = anthropic.Anthropic(base_url=gateway.proxy_url, api_key=MASTER_KEY, max_retries=0)
        raw = sdk.messages.with_raw_response.create(model="claude-sonnet-4-6", max_tokens=50,
                                                    messages=[{"role": "user", "content": prompt}])
    raw.parse()
    assert raw.headers["x-smartflow-provider"] == "openai" and raw.headers["x-smartflow-attempts"] == "2"
    assert raw.headers["x-smartflow-compliance"] == "flagged"
    for provider in ("anthropic", "openai"):
        assert fake_upstream.requests_for(provider), provider
        assert EMAIL not in sent(fake_upstream, provider) and "<EMAIL_ADDRESS>" in sent(fake_upstream, provider)
    log = gateway.log(raw.headers["x-smartflow-request-id"])
    assert [hop["provider"] for hop in log.routing["chain"]] == ["anthropic", "openai"]
    assert EMAIL not in json.dumps(log.prompt) and log.compliance == "flagged"


def test_a_blocked_prompt_reaches_no_target(gateway, routing_policy, fake_upstream):
    GuardrailPolicy.objects.create(name="no-pii", kind="pii", action="block", on="prompt")
    guardrail_policies.invalidate()
    guardrail_policies.get_sync()
    try:
        routing_policy("fo", "failover", TARGETS)
        sdk = openai.OpenAI(base_url=gateway.proxy_url + "/v1", api_key=MASTER_KEY, max_retries=0)
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": f"mail {EMAIL}"}])
        assert caught.value.code == "guardrail_blocked"
        assert not [r for r in fake_upstream.requests if r.provider != "unknown"]
    finally:
        GuardrailPolicy.objects.all().delete()
        guardrail_policies.invalidate()
        guardrail_policies.get_sync()


def test_spend_is_priced_for_the_target_that_served(gateway, routing_policy, fake_upstream, settings):
    settings.SMARTFLOW_LIMITS = True
    team = Team.objects.create(name=f"gov-{uuid.uuid4().hex[:8]}", budget_cap_usd=Decimal("100"), rpm_limit=100)
    forget_keys()
    raw_key = VirtualKey.issue(team, name="gov")[1]
    routing_policy("fo", "failover", TARGETS, retry={"attempts": 0})
    fake_upstream.script("anthropic", status=529)
    sdk = openai.OpenAI(base_url=gateway.proxy_url + "/v1", api_key=raw_key, max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    answer = raw.parse()
    assert raw.headers["x-smartflow-provider"] == "openai"
    assert raw.headers["x-ratelimit-limit-requests"] == "100"
    log = gateway.log(raw.headers["x-smartflow-request-id"])
    usage = answer.usage
    expected = (Decimal(usage.prompt_tokens) * 2 + Decimal(usage.completion_tokens) * 8) / 1_000_000  # gpt-4.1
    assert log.provider == "openai" and not log.unpriced
    assert log.cost_usd == pytest.approx(expected)
