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


def team_cmd(*args) -> str:
    out = StringIO()
    call_command("smartflow_team", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.mark.django_db
def test_smartflow_team_creates_updates_and_lists_limits():
    team_cmd("create", "ml", "--budget", "100", "--period", "daily", "--tpm", "5000", "--rpm", "60",
             "--models", "gpt-4.1,claude-sonnet-4-6")
    team = Team.objects.get(name="ml")
    assert (float(team.budget_cap_usd), team.budget_period, team.tpm_limit, team.rpm_limit) == (100, "daily", 5000, 60)
    assert team.allowed_models == ["gpt-4.1", "claude-sonnet-4-6"]
    team_cmd("update", "ml", "--rpm", "none", "--period", "total")  # the rest stays as it was
    team.refresh_from_db()
    assert (team.rpm_limit, team.tpm_limit, team.budget_period) == (None, 5000, "total")
    listing = team_cmd("list")
    assert "ml" in listing and "total" in listing and "gpt-4.1,claude-sonnet-4-6" in listing
    with pytest.raises(CommandError):
        team_cmd("create", "ml")  # exists
    with pytest.raises(CommandError):
        team_cmd("update", "nobody", "--rpm", "5")


@pytest.mark.django_db
@pytest.mark.parametrize("args", [("--rpm", "-1"), ("--tpm", "99999999999"), ("--budget", "NaN"),
                                  ("--budget", "1e12"), ("--period", "weekly"), ("--rpm", "lots")])
def test_smartflow_team_refuses_limits_the_database_cannot_hold(args):
    with pytest.raises((CommandError, SystemExit)):
        team_cmd("create", "bad", *args)
    assert not Team.objects.filter(name="bad").exists()
    with pytest.raises((CommandError, SystemExit)):
        run("create", "--team", "bad2", *args)
    assert not VirtualKey.objects.exists()


@pytest.mark.django_db
def test_sso_team_defaults_carry_the_rate_limit_and_period():
    from django.contrib.auth import get_user_model

    from sso import config
    from sso.teams import SsoGroupSync

    parsed = config.parse({"providers": [], "team_defaults": {"budget_cap_usd": 50, "budget_period": "daily",
                                                              "rpm_limit": 30, "tpm_limit": 1000}})
    user = get_user_model().objects.create(username="ann")
    SsoGroupSync(parsed).apply(user, ["platform"], first_signin=True)
    team = Team.objects.get(name="platform")
    assert (team.budget_period, team.rpm_limit, team.tpm_limit, float(team.budget_cap_usd)) == ("daily", 30, 1000, 50)
    for bad in ({"budget_period": "weekly"}, {"rpm_limit": -1}, {"rpm_limit": 2**31}, {"rpm_limit": 1.5}):
        with pytest.raises(config.ConfigError):
            config.parse({"providers": [], "team_defaults": bad})
