"""SSO state kept in the database: shared key-value entries (when there is no Redis) and IdP identities."""
from django.conf import settings
from django.db import models


class SsoEntry(models.Model):
    """A value shared by every gateway process: the SSO config, or a pending sign-in (with expiry).

    Used only when REDIS_URL is unset; with Redis the same keys live there.
    """

    key = models.CharField(max_length=200, primary_key=True)
    value = models.JSONField()
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        verbose_name = "SSO store entry"
        verbose_name_plural = "SSO store entries"

    def __str__(self):
        return self.key


class SsoIdentity(models.Model):
    """Links a Django user to one subject at one IdP (issuer + sub), never by e-mail alone."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sso_identities")
    provider = models.CharField(max_length=100, help_text="The provider name in the SSO config.")
    issuer = models.CharField(max_length=500)
    subject = models.CharField(max_length=255)
    email = models.CharField(max_length=254, blank=True)
    groups = models.JSONField(default=list, blank=True, help_text="Groups in the last synced id_token.")
    deactivated_by_sync = models.BooleanField(
        default=False, help_text="The user was in no group at the last sign-in, so the sync took access away.")
    first_signin = models.DateTimeField(auto_now_add=True)
    last_signin = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "SSO identity"
        verbose_name_plural = "SSO identities"
        constraints = [models.UniqueConstraint(fields=["issuer", "subject"], name="sso_identity_issuer_subject")]

    def __str__(self):
        return f"{self.provider}:{self.subject} → {self.user}"
