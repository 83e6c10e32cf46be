"""Groups from the IdP → Smartflow teams (the SsoGroupSync step), and teams as the API shows them."""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.utils import timezone

from proxy.models import Team

from .config import SsoConfig, TeamDefaults


@dataclass
class SyncResult:
    teams: list[str] = field(default_factory=list)  # the user's teams after the sync
    created: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    synced: bool = False  # False: membership left as it was (sync off, not the first sign-in)


def groups_from_claims(claims: dict, claim: str) -> list[str] | None:
    """The group names in the claim; None when the IdP replaced them with a link (Entra group overage)."""
    value = claims.get(claim)
    if value is None:
        # Entra: too many groups for a token → "_claim_names": {"groups": "src1"} and no groups claim.
        if claim in (claims.get("_claim_names") or {}) or claims.get("hasgroups") in (True, "true"):
            return None
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return sorted({str(g).strip() for g in value if str(g).strip()})


class SsoGroupSync:
    """Sets a user's SSO teams to exactly the groups in the id_token.

    Teams that do not exist yet are created from the team defaults (source
    "sso"). Membership is set on the first sign-in, and on every later one when
    sync_on_every_signin is on, which also removes the user from SSO teams whose
    group they left. Teams an admin made by hand are joined when a group has
    their name, and left only when that group was the way in (the user's
    previous groups); members the admin added by hand stay.
    """

    def __init__(self, config: SsoConfig):
        self.defaults: TeamDefaults = config.team_defaults
        self.every_signin = config.sync_on_every_signin

    def apply(self, user, groups: list[str], first_signin: bool, previous_groups: list[str] = ()) -> SyncResult:
        result = SyncResult()
        if not (first_signin or self.every_signin):
            result.teams = sorted(user.teams.values_list("name", flat=True))
            return result
        result.synced = True
        now = timezone.now()
        with transaction.atomic():
            wanted = [self._team(name, result) for name in groups]
            current = {t.name: t for t in user.teams.all()}
            for team in wanted:
                if team.name not in current:
                    team.members.add(user)
                    result.added.append(team.name)
            for name, team in current.items():
                # A hand-made team is left only when it was joined through a group the user has since left.
                if name not in groups and (team.source == "sso" or name in previous_groups):
                    team.members.remove(user)
                    result.removed.append(name)
            touched = [t.pk for t in wanted] + [current[n].pk for n in result.removed]
            Team.objects.filter(pk__in=touched).update(last_synced=now)
        result.teams = sorted(user.teams.values_list("name", flat=True))
        return result

    def _team(self, name: str, result: SyncResult) -> Team:
        team = Team.objects.filter(name=name).first()
        if team:
            return team
        d = self.defaults
        try:
            with transaction.atomic():
                team = Team.objects.create(
                    name=name, source="sso", allowed_models=list(d.allowed_models), tpm_limit=d.tpm_limit,
                    rpm_limit=d.rpm_limit, budget_period=d.budget_period,
                    budget_cap_usd=None if d.budget_cap_usd is None else Decimal(str(d.budget_cap_usd)))
        except IntegrityError:  # another sign-in created it a moment ago
            return Team.objects.get(name=name)
        result.created.append(name)
        return team


def team_as_dict(team: Team, spent_usd=None) -> dict:
    """spent_usd: the live spend of the current period (proxy.limits.team_spend); else the stored copy."""
    return {"name": team.name, "source": team.source,
            "budget_cap_usd": None if team.budget_cap_usd is None else float(team.budget_cap_usd),
            "budget_period": team.budget_period,
            "spent_usd": float(team.spent_usd if spent_usd is None else spent_usd),
            "tpm_limit": team.tpm_limit, "rpm_limit": team.rpm_limit,
            "allowed_models": list(team.allowed_models or []),
            "members": sorted(m.username for m in team.members.all()),
            "last_synced": team.last_synced.isoformat() if team.last_synced else None}


def visible_teams(user) -> frozenset[str] | None:
    """The team names whose traffic this user may read; None: every team's (staff, master and admin keys).

    The database membership decides, not a JWT's `teams` claim: a user removed
    from a team stops seeing it at once, whatever token they still hold.
    """
    if user.is_staff or user.is_superuser:
        return None
    return frozenset(Team.objects.filter(members=user).values_list("name", flat=True))
