"""The smartflow_key command and the stored form of keys."""
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from proxy.auth import authenticate_sync
from proxy.models import Team, VirtualKey, hash_key


def run(*args) -> str:
    out = StringIO()
    call_command("smartflow_key", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.mark.django_db
def test_create_prints_a_key_once_and_stores_only_its_hash():
    raw = run("create", "--team", "ml", "--budget", "25.5", "--tpm", "1000", "--rpm", "60",
              "--models", "gpt-4.1, claude-sonnet-4-6")
    raw = raw.strip()
    assert raw.startswith("sk-sf-") and len(raw) > 40
    key = VirtualKey.objects.get()
    assert key.key_hash == hash_key(raw) and raw not in str(VirtualKey.objects.values())
    # The limits are the key's own (CONTRACT "Command line"); the new team gets the models only.
    assert float(key.budget_cap_usd) == 25.5 and key.tpm_limit == 1000 and key.rpm_limit == 60
    team = Team.objects.get(name="ml")
    assert team.budget_cap_usd is None and team.tpm_limit is None and team.rpm_limit is None
    assert team.allowed_models == ["gpt-4.1", "claude-sonnet-4-6"]
    principal = authenticate_sync(raw)
    assert principal.team == "ml" and principal.limits.key_rpm == 60 and principal.limits.key_tpm == 1000


@pytest.mark.django_db
def test_list_shows_prefixes_and_revoke_stops_the_key():
    raw = run("create", "--team", "ops").strip()
    listing = run("list")
    assert raw[:12] in listing and raw not in listing and "active" in listing
    run("revoke", raw[:12])
    assert "revoked" in run("list")
    assert authenticate_sync(raw) is None
    with pytest.raises(CommandError):
        run("revoke", raw[:12])


@pytest.mark.django_db
def test_provider_keys_are_encrypted_at_rest():
    from proxy import keystore
    from proxy.models import ProviderKey

    row = ProviderKey(provider="openai")
    row.set_key("sk-live-secret-value-1234")
    row.save()
    stored = ProviderKey.objects.values_list("encrypted_key", flat=True).get()
    assert "sk-live-secret" not in stored
    keystore.provider_keys.invalidate()
    assert keystore.provider_keys.get_sync()["openai"] == "sk-live-secret-value-1234"
    keystore.provider_keys.invalidate()
