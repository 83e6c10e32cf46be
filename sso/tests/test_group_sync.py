"""Groups → teams on sign-in: created with the defaults, set on first sign-in, re-synced when sync is on."""
import httpx

from .conftest import provider, sign_in


def teams_of(username):
    from django.contrib.auth.models import User

    return sorted(User.objects.get(username=username).teams.values_list("name", flat=True))


def fresh(gateway):
    return httpx.Client(base_url=gateway.management_url, timeout=10)


def test_it_removes_the_user_from_teams_whose_group_they_left(configure, op, gateway):
    from proxy.models import Team

    configure()
    with fresh(gateway) as b:
        assert sign_in(b)[0].json()["teams"] == ["platform", "research"]
    synced_before = Team.objects.get(name="platform").last_synced
    op.users["alice"].groups = ["research", "security"]
    with fresh(gateway) as b:
        response, _ = sign_in(b)
    assert response.json()["teams"] == ["research", "security"]
    assert teams_of("alice@example.com") == ["research", "security"]
    # The team she left still exists (other members may use it), and shows the sync.
    assert Team.objects.get(name="platform").last_synced > synced_before


def test_it_sets_membership_on_first_sign_in_only_when_sync_is_off(configure, op, gateway):
    configure(sync=False)
    with fresh(gateway) as b:
        assert sign_in(b)[0].json()["teams"] == ["platform", "research"]
    op.users["alice"].groups = ["security"]
    with fresh(gateway) as b:
        response, _ = sign_in(b)
    assert response.status_code == 200
    assert response.json()["teams"] == ["platform", "research"]
    from proxy.models import Team

    assert not Team.objects.filter(name="security").exists()


def test_it_refuses_a_user_in_no_group(configure, op, gateway):
    configure()
    op.current_user = "carol"
    with fresh(gateway) as b:
        response, _ = sign_in(b)
        assert response.status_code == 403 and response.json()["code"] == "no_team_access"
        assert "sessionid" not in b.cookies


def test_a_user_removed_from_every_group_loses_access(configure, op, gateway):
    configure()
    with fresh(gateway) as b:
        first, _ = sign_in(b)
        token = first.json()["token"]
        assert b.get("/api/teams").status_code == 200
        op.users["alice"].groups = []
        with fresh(gateway) as again:
            response, _ = sign_in(again)
        assert response.status_code == 403 and response.json()["code"] == "no_team_access"
        assert teams_of("alice@example.com") == []
        # The old session and the old JWT stop working at once.
        assert b.get("/api/teams").status_code in (401, 403)
    with httpx.Client(base_url=gateway.management_url, headers={"Authorization": f"Bearer {token}"}) as api:
        assert api.get("/api/teams").status_code == 401
    # Back in a group: access comes back with the next sign-in.
    op.users["alice"].groups = ["research"]
    with fresh(gateway) as b:
        assert sign_in(b)[0].status_code == 200


def test_it_does_not_reactivate_a_user_an_admin_disabled(configure, op, gateway):
    from django.contrib.auth.models import User

    configure()
    with fresh(gateway) as b:
        assert sign_in(b)[0].status_code == 200
    User.objects.filter(username="alice@example.com").update(is_active=False)
    with fresh(gateway) as b:
        response, _ = sign_in(b)
    assert response.status_code == 403 and response.json()["code"] == "account_disabled"


def test_it_reports_entra_group_overage(configure, op, gateway):
    configure()
    op.current_user = "dave"
    with fresh(gateway) as b:
        response, _ = sign_in(b)
        assert response.status_code == 403
        assert response.json()["code"] == "group_overage"
        assert "overage" in response.json()["error"] and "sessionid" not in b.cookies


def test_it_keeps_limits_of_existing_teams_and_hand_added_members(configure, op, gateway):
    from decimal import Decimal

    from django.contrib.auth.models import User

    from proxy.models import Team

    manual = Team.objects.create(name="research", budget_cap_usd=Decimal(5), tpm_limit=10,
                                 allowed_models=["gpt-4.1-mini"])
    hand_added = User.objects.create(username="zoe")
    manual.members.add(hand_added)
    configure()
    with fresh(gateway) as b:
        assert sign_in(b)[0].status_code == 200
    manual.refresh_from_db()
    assert manual.source == "manual" and manual.budget_cap_usd == Decimal(5) and manual.tpm_limit == 10
    assert manual.allowed_models == ["gpt-4.1-mini"]
    assert sorted(manual.members.values_list("username", flat=True)) == ["alice@example.com", "zoe"]
    # Alice leaves the group that took her in: she leaves the team; Zoe, added by hand, stays.
    op.users["alice"].groups = ["platform"]
    with fresh(gateway) as b:
        assert sign_in(b)[0].status_code == 200
    assert sorted(manual.members.values_list("username", flat=True)) == ["zoe"]


def test_it_uses_a_custom_groups_claim(configure, op, gateway):
    configure(provider(op, groups_claim="roles"))
    op.claim_overrides = {"roles": ["ml-ops"]}
    with fresh(gateway) as b:
        assert sign_in(b)[0].json()["teams"] == ["ml-ops"]


def test_team_members_see_only_their_teams(configure, op, gateway, team):
    configure()
    with fresh(gateway) as b:
        token = sign_in(b)[0].json()["token"]
    with httpx.Client(base_url=gateway.management_url, headers={"Authorization": f"Bearer {token}"}) as api:
        names = [t["name"] for t in api.get("/api/teams").json()["data"]]
    assert "research" in names and "platform" in names
    assert len(names) == 2  # the fixture's manual team is someone else's


def test_admins_see_every_team(configure, op, gateway, management_client):
    from proxy.models import Team

    Team.objects.create(name="billing")
    configure()
    with fresh(gateway) as b:
        sign_in(b)
    body = management_client.get("/api/teams").json()
    assert body["success"] is True
    rows = {t["name"]: t for t in body["data"]}
    assert set(rows) == {"billing", "platform", "research"}
    assert rows["billing"] == {"name": "billing", "source": "manual", "budget_cap_usd": None,
                               "budget_period": "monthly", "spent_usd": 0.0, "tpm_limit": None, "rpm_limit": None,
                               "allowed_models": [], "members": [], "last_synced": None}
