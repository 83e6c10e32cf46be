"""`manage.py sso_config show | set FILE | test NAME`: the SSO config from the command line."""
import json
import sys

from django.core.management.base import BaseCommand, CommandError

from sso import config as sso_config
from sso.api import config_answer
from sso.checks import test_provider


class Command(BaseCommand):
    help = "Show, replace (from a JSON file, or - for stdin) or test the SSO config. Secrets come from the environment."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("show", help="Print the SSO config as JSON.")
        setter = sub.add_parser("set", help="Replace the SSO config with the JSON in FILE ('-' reads stdin).")
        setter.add_argument("file")
        tester = sub.add_parser("test", help="Fetch discovery and JWKS for a saved provider, step by step.")
        tester.add_argument("name")

    def handle(self, *args, action, **options):
        if action == "show":
            self.stdout.write(json.dumps(config_answer(sso_config.load()), indent=2))
        elif action == "set":
            path = options["file"]
            try:
                if path == "-":
                    body = json.load(sys.stdin)
                else:
                    with open(path) as f:
                        body = json.load(f)
            except (OSError, ValueError) as exc:
                raise CommandError(f"Cannot read JSON from {path}: {exc}")
            try:
                config = sso_config.save(sso_config.parse(body))
            except sso_config.ConfigError as exc:
                raise CommandError("Invalid SSO config:\n  " + "\n  ".join(exc.errors))
            self.stdout.write(f"Saved: {len(config.providers)} provider(s), "
                              f"sync on every sign-in {'on' if config.sync_on_every_signin else 'off'}.")
        else:
            provider = sso_config.load().provider(options["name"])
            if provider is None:
                raise CommandError(f"No saved provider named '{options['name']}'.")
            steps = test_provider(provider)
            for s in steps:
                self.stdout.write(f"[{'ok' if s['ok'] else 'FAIL'}] {s['name']}: {s['detail']}")
            if not all(s["ok"] for s in steps):
                raise CommandError("The connection test failed.")
