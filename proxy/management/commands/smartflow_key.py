"""smartflow_key create|list|revoke: virtual keys from the command line."""
from decimal import Decimal

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from proxy.models import Team, VirtualKey


def model_list(models: str | None) -> list[str]:
    return [m.strip() for m in (models or "").split(",") if m.strip()]


def check_limits(**limits):
    """--budget, --tpm, --rpm: within what the database holds (0 refuses everything; leave a
    limit out for none)."""
    for name, value in limits.items():
        if value is None:
            continue
        most = Decimal(99_999_999) if name == "budget" else 2_147_483_647
        if not (isinstance(value, int) or value.is_finite()) or not 0 <= value <= most:
            raise CommandError(f"--{name} must be a number from 0 to {most} (leave it out for no limit).")
    return limits


class Command(BaseCommand):
    help = "Create, list or revoke Smartflow virtual keys."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="Create a key (printed once; stored hashed).")
        create.add_argument("--team", required=True)
        create.add_argument("--budget", type=Decimal, help="The key's own budget cap in USD (over its team's "
                                                           "budget period).")
        create.add_argument("--tpm", type=int, help="The key's own tokens-per-minute limit.")
        create.add_argument("--rpm", type=int, help="The key's own requests-per-minute limit.")
        create.add_argument("--models", help="Comma-separated models a team made now may use.")
        create.add_argument("--name", default="")
        create.add_argument("--admin", action="store_true", help="The key may use the management API.")
        sub.add_parser("list", help="List keys (prefixes only).")
        revoke = sub.add_parser("revoke", help="Revoke the key(s) with this prefix.")
        revoke.add_argument("prefix")

    def handle(self, *args, action, **options):
        getattr(self, f"do_{action}")(**options)

    def do_create(self, team, budget, tpm, rpm, models, name, admin, **_):
        limits = check_limits(budget=budget, tpm=tpm, rpm=rpm)
        team_obj = Team.objects.filter(name=team).first()
        if team_obj is None:  # a new team: --models are its allowed models (smartflow_team manages it later)
            team_obj = Team.objects.create(name=team, allowed_models=model_list(models))
        elif models is not None:
            self.stderr.write(f"Team '{team}' exists: --models ignored (use smartflow_team update).")
        key, raw = VirtualKey.issue(team_obj, name=name, is_admin=admin, rpm_limit=limits["rpm"],
                                    tpm_limit=limits["tpm"], budget_cap_usd=limits["budget"])
        self.stdout.write(raw)
        self.stderr.write(f"Key {key.prefix}… created for team '{team_obj.name}'. "
                          "It is shown only this once.")

    def do_list(self, **_):
        rows = VirtualKey.objects.select_related("team").order_by("created")
        self.stdout.write(f"{'PREFIX':14} {'TEAM':20} {'ADMIN':6} {'STATUS':8} {'RPM':>8} {'TPM':>10} "
                          f"{'BUDGET':>10} CREATED")
        for key in rows:
            status = "revoked" if key.revoked_at else "active"
            self.stdout.write(f"{key.prefix:14} {key.team.name:20} {'yes' if key.is_admin else 'no':6} "
                              f"{status:8} {key.rpm_limit or '-':>8} {key.tpm_limit or '-':>10} "
                              f"{'-' if key.budget_cap_usd is None else key.budget_cap_usd:>10} "
                              f"{key.created:%Y-%m-%d %H:%M}")

    def do_revoke(self, prefix, **_):
        if len(prefix) < 8:
            raise CommandError("Give at least 8 characters of the key prefix (e.g. sk-sf-Ab).")
        count = VirtualKey.objects.filter(prefix__startswith=prefix[:12], revoked_at__isnull=True) \
            .update(revoked_at=timezone.now())
        if not count:
            raise CommandError(f"No active key starts with '{prefix}'.")
        self.stdout.write(f"Revoked {count} key(s). Gateways stop accepting them within "
                          "SMARTFLOW_CONFIG_TTL seconds.")
