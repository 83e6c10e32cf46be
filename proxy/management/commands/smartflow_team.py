"""smartflow_team create|update|list: teams and their limits from the command line."""
from decimal import Decimal

from django.core.management.base import BaseCommand, CommandError

from proxy import limits
from proxy.models import PERIODS, Team

from .smartflow_key import check_limits, model_list

REMOVE = object()  # '--tpm none': the limit is removed


def _limit(kind):
    """A number, or 'none' to remove the limit."""
    def parse(value: str):
        return REMOVE if value.lower() == "none" else kind(value)
    parse.__name__ = kind.__name__
    return parse


class Command(BaseCommand):
    help = "Create, update or list teams (budget, period, token and request limits, allowed models)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        for action in ("create", "update"):
            p = sub.add_parser(action, help=f"{action.title()} a team.")
            p.add_argument("name")
            p.add_argument("--budget", type=_limit(Decimal), help="Budget cap in USD per period ('none': no cap).")
            p.add_argument("--period", choices=[p for p, _ in PERIODS], help="Budget period (default monthly).")
            p.add_argument("--tpm", type=_limit(int), help="Tokens per minute ('none': no limit).")
            p.add_argument("--rpm", type=_limit(int), help="Requests per minute ('none': no limit).")
            p.add_argument("--models", help="Comma-separated models the team may use ('' : every model).")
        sub.add_parser("list", help="List teams, their limits and the current period's spend.")

    def handle(self, *args, action, **options):
        getattr(self, f"do_{action}")(**options)

    def do_create(self, name, **options):
        if Team.objects.filter(name=name).exists():
            raise CommandError(f"Team '{name}' exists; use update.")
        team = Team(name=name)
        self._apply(team, **options)
        self.stdout.write(f"Team '{name}' created.")

    def do_update(self, name, **options):
        team = Team.objects.filter(name=name).first()
        if team is None:
            raise CommandError(f"No team '{name}'; use create.")
        self._apply(team, **options)
        self.stdout.write(f"Team '{name}' updated. Gateways apply it within SMARTFLOW_CONFIG_TTL seconds.")

    def _apply(self, team, budget=None, period=None, tpm=None, rpm=None, models=None, **_):
        given = {"budget_cap_usd": budget, "tpm_limit": tpm, "rpm_limit": rpm}
        check_limits(**{name: v for name, v in (("budget", budget), ("tpm", tpm), ("rpm", rpm)) if v is not REMOVE})
        for field, value in given.items():
            if value is not None:
                setattr(team, field, None if value is REMOVE else value)
        if period is not None:
            team.budget_period = period
        if models is not None:
            team.allowed_models = model_list(models)
        team.save()

    def do_list(self, **_):
        teams = list(Team.objects.order_by("name"))
        spent = limits.sync_spend(teams)
        self.stdout.write(f"{'TEAM':20} {'SOURCE':7} {'BUDGET':>10} {'PERIOD':8} {'SPENT':>12} {'TPM':>10} "
                          f"{'RPM':>8} MODELS")
        for t in teams:
            self.stdout.write(f"{t.name:20} {t.source:7} {'-' if t.budget_cap_usd is None else t.budget_cap_usd:>10} "
                              f"{t.budget_period:8} {spent[t.pk]:>12} {t.tpm_limit or '-':>10} "
                              f"{t.rpm_limit or '-':>8} {','.join(t.allowed_models or []) or '(all)'}")
