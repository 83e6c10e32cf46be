"""Provider API keys: from the environment or the admin (encrypted), cached in memory."""
import base64
import hashlib

from cryptography.fernet import Fernet
from django.conf import settings

from .snapshot import Snapshot


def _fernet() -> Fernet:
    secret = settings.SMARTFLOW_ENCRYPTION_KEY or settings.SECRET_KEY
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest()))


def encrypt(raw: str) -> str:
    return _fernet().encrypt(raw.encode()).decode()


def decrypt(token: str) -> str:
    return _fernet().decrypt(token.encode()).decode()


def _load() -> dict[str, str]:
    from .models import ProviderKey

    keys = {p: k for p, k in settings.SMARTFLOW_PROVIDER_KEYS.items() if k}
    # A key set in the admin wins over the environment.
    for row in ProviderKey.objects.all():
        keys[row.provider] = decrypt(row.encrypted_key)
    return keys


provider_keys = Snapshot(_load)
