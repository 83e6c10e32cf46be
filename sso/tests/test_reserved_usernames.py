"""Key sign-ins use accounts of their own ("smartflow-admin", "key-<prefix>"): an IdP user named like
one must never become it (a user who registers as "smartflow-admin" at a self-service IdP would
otherwise be made a superuser the next time the master key opens the dashboard)."""
import httpx
import pytest

from traces.tests.conftest import make_log

from .conftest import configure, op, op_server, sign_in, sso_clean  # noqa: F401 (fixtures)
from .test_key_sessions import signed_in


@pytest.mark.parametrize("name", ["smartflow-admin", "key-{prefix}"])
def test_an_idp_user_named_like_a_key_account_stays_a_member(configure, op, gateway, master_key, name):  # noqa: F811
    from proxy.models import Team, VirtualKey
    from traces.models import VASLog

    configure()
    admin_key, raw = VirtualKey.issue(Team.objects.create(name="ops"), name="ops", is_admin=True)
    op.current_user = "bob"  # group research only
    op.claim_overrides = {"preferred_username": name.format(prefix=admin_key.prefix)}
    with httpx.Client(base_url=gateway.management_url, timeout=10) as browser:
        first, _ = sign_in(browser)
        assert first.status_code == 200 and first.json()["user"]["is_staff"] is False
    # The operator opens the dashboard with the master key and the admin key.
    for key in (master_key, raw):
        with signed_in(gateway, key):
            pass
    VASLog.objects.bulk_create([make_log(team="research"), make_log(team="billing")])
    with httpx.Client(base_url=gateway.management_url, timeout=10) as browser:
        again, _ = sign_in(browser)
        assert again.status_code == 200 and again.json()["user"]["is_staff"] is False
        assert {row["team"] for row in browser.get("/api/vas/logs").json()["data"]} == {"research"}
        assert browser.get("/admin/", follow_redirects=False).status_code == 302


def test_a_key_sign_in_never_adopts_an_sso_account_that_already_holds_its_name(gateway, master_key):
    """Accounts an IdP named so before the names were reserved: the key sign-in is refused."""
    import re

    from django.contrib.auth import get_user_model

    from sso.models import SsoIdentity

    user = get_user_model().objects.create_user("smartflow-admin")
    SsoIdentity.objects.create(user=user, provider="corp", issuer="https://idp.example", subject="s-1")
    with httpx.Client(base_url=gateway.management_url, timeout=10) as client:
        form = client.get("/dashboard/sso_login.html")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
        r = client.post("/dashboard/sso_login.html", data={"api_key": master_key, "csrfmiddlewaretoken": token})
        assert r.status_code == 409 and "smartflow-admin" in r.text
    user.refresh_from_db()
    assert not (user.is_staff or user.is_superuser)
