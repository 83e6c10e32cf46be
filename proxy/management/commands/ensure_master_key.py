"""Makes a master key in the data folder when none is set, and prints it once."""
import secrets

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the master key (data folder) if SMARTFLOW_MASTER_KEY is unset and none is stored."

    def handle(self, *args, **options):
        if settings.SMARTFLOW_MASTER_KEY:
            return
        path = settings.DATA_DIR / "master_key"
        key = "sk-sf-" + secrets.token_urlsafe(32)
        settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(key)
        path.chmod(0o600)
        self.stdout.write(f"Master key (shown once; stored in {path}):\n  {key}")
