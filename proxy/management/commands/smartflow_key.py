"""smartflow_key create|list|revoke: virtual keys from the command line."""
from decimal import Decimal

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from proxy.models import Team, VirtualKey


class Command(BaseCommand):
    help = "Create, list or revoke Smartflow virtual keys."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="Create a key (printed once; stored hashed).")
        create.add_argument("--team", required=True)
        create.add_argument("--budget", type=Decimal, help="Team budget cap in USD.")
        create.add_argument("--tpm", type=int, help="Team tokens-per-minute limit.")
        create.add_argument("--models", help="Comma-separated models the team may use.")
        create.add_argument("--name", default="")
        create.add_argument("--admin", action="store_true", help="The key may use the management API.")
        sub.add_parser("list", help="List keys (prefixes only).")
        revoke = sub.add_parser("revoke", help="Revoke the key(s) with this prefix.")
        revoke.add_argument("prefix")

    def handle(self, *args, action, **options):
        getattr(self, f"do_{action}")(**options)

    def do_create(self, team, budget, tpm, models, name, admin, **_):
        team_obj, _ = Team.objects.get_or_create(name=team)
        if budget is not None:
            team_obj.budget_cap_usd = budget
        if tpm is not None:
            team_obj.tpm_limit = tpm
        if models is not None:
            team_obj.allowed_models = [m.strip() for m in models.split(",") if m.strip()]
        team_obj.save()
        key, raw = VirtualKey.issue(team_obj, name=name, is_admin=admin)
        self.stdout.write(raw)
        self.stderr.write(f"Key {key.prefix}… created for team '{team_obj.name}'. "
                          "It is shown only this once.")

    def do_list(self, **_):
        rows = VirtualKey.objects.select_related("team").order_by("created")
        self.stdout.write(f"{'PREFIX':14} {'TEAM':20} {'ADMIN':6} {'STATUS':8} CREATED")
        for key in rows:
            status = "revoked" if key.revoked_at else "active"
            self.stdout.write(f"{key.prefix:14} {key.team.name:20} {'yes' if key.is_admin else 'no':6} "
                              f"{status:8} {key.created:%Y-%m-%d %H:%M}")

    def do_revoke(self, prefix, **_):
        if len(prefix) < 8:
            raise CommandError("Give at least 8 characters of the key prefix (e.g. sk-sf-Ab).")
        count = VirtualKey.objects.filter(prefix__startswith=prefix[:12], revoked_at__isnull=True) \
            .update(revoked_at=timezone.now())
        if not count:
            raise CommandError(f"No active key starts with '{prefix}'.")
        self.stdout.write(f"Revoked {count} key(s). Gateways stop accepting them within "
                          "SMARTFLOW_CONFIG_TTL seconds.")
