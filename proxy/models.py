"""Teams, virtual keys, provider keys and tier-table overrides."""
import hashlib
import secrets

from django.conf import settings
from django.db import models

KEY_PREFIX = "sk-sf-"
PROVIDER_CHOICES = [(p, p) for p in ("openai", "anthropic", "gemini", "ollama")]


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class Team(models.Model):
    SOURCES = [("manual", "manual"), ("sso", "sso")]

    name = models.CharField(max_length=200, unique=True)
    source = models.CharField(max_length=10, choices=SOURCES, default="manual")
    budget_cap_usd = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    spent_usd = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    tpm_limit = models.PositiveIntegerField(null=True, blank=True)
    # Empty list: every model is allowed.
    allowed_models = models.JSONField(default=list, blank=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="teams")
    last_synced = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.name


class VirtualKey(models.Model):
    name = models.CharField(max_length=200, blank=True)
    prefix = models.CharField(max_length=16, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="keys")
    is_admin = models.BooleanField(default=False, help_text="May use the management API.")
    created = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "virtual key"

    def __str__(self):
        return f"{self.prefix}… ({self.team})"

    @classmethod
    def issue(cls, team: Team, name: str = "", is_admin: bool = False) -> tuple["VirtualKey", str]:
        """Create a key; the raw value is returned once and only its hash is kept."""
        raw = KEY_PREFIX + secrets.token_urlsafe(32)
        key = cls.objects.create(team=team, name=name, is_admin=is_admin,
                                 prefix=raw[:12], key_hash=hash_key(raw))
        return key, raw


class ProviderKey(models.Model):
    """A provider API key entered in the admin, encrypted at rest."""

    provider = models.CharField(max_length=20, choices=PROVIDER_CHOICES, unique=True)
    encrypted_key = models.TextField(editable=False)
    last4 = models.CharField(max_length=4, editable=False)
    updated = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"{self.provider} …{self.last4}"

    def set_key(self, raw: str):
        from .keystore import encrypt

        self.encrypted_key = encrypt(raw)
        self.last4 = raw[-4:]


class TierEntry(models.Model):
    """An admin override or addition to the tier table shipped in proxy/tiers.json."""

    TIERS = [("flagship", "flagship"), ("balanced", "balanced"), ("fast", "fast")]

    model = models.CharField(max_length=200, unique=True,
                             help_text="Model name; also matches dated variants (name-2025-…).")
    provider = models.CharField(max_length=20, choices=PROVIDER_CHOICES)
    tier = models.CharField(max_length=20, choices=TIERS)
    is_default = models.BooleanField(default=False, help_text="The model this provider uses for the tier.")
    input_usd_per_mtok = models.DecimalField(max_digits=10, decimal_places=4, null=True, blank=True)
    output_usd_per_mtok = models.DecimalField(max_digits=10, decimal_places=4, null=True, blank=True)

    class Meta:
        verbose_name_plural = "tier entries"

    def __str__(self):
        return f"{self.model} ({self.provider}, {self.tier})"


class RoutingPolicy(models.Model):
    """A routing policy (CONTRACT "Routing policies"); validated by proxy/routing_policies/spec.py."""

    STRATEGIES = [("failover", "failover"), ("weighted", "weighted"), ("cheapest", "cheapest")]

    name = models.CharField(max_length=100, unique=True)
    strategy = models.CharField(max_length=20, choices=STRATEGIES)
    targets = models.JSONField(help_text='[{"provider": "anthropic", "model": "claude-sonnet-4-6", "weight": 1}, …]')
    retry = models.JSONField(default=dict, blank=True, help_text='{"attempts": 1, "backoff_ms": 250}')
    failover_on = models.JSONField(default=list, blank=True,
                                   help_text='Statuses and "timeout", "connect"; empty: the default set.')
    teams = models.JSONField(default=list, blank=True, help_text="Team names; empty: all.")
    sticky = models.CharField(max_length=10, blank=True, default="", help_text='"user" or empty.')
    enabled = models.BooleanField(default=True)
    priority = models.IntegerField(default=100, help_text="Lowest first; ties by name.")
    updated = models.DateTimeField(auto_now=True)
    # Last: the field's name hides django.db.models in the rest of the class body.
    models = models.JSONField(default=list, blank=True, help_text="Client model names; empty: all.")

    class Meta:
        verbose_name_plural = "routing policies"
        ordering = ("priority", "name")

    def __str__(self):
        return f"{self.name} ({self.strategy})"
