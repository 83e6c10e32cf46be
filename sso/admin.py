"""SSO identities in the admin (who signed in through which IdP, with which groups)."""
from django.contrib import admin

from .models import SsoIdentity


@admin.register(SsoIdentity)
class SsoIdentityAdmin(admin.ModelAdmin):
    list_display = ("user", "provider", "email", "subject", "deactivated_by_sync", "last_signin")
    list_filter = ("provider", "deactivated_by_sync")
    search_fields = ("user__username", "email", "subject")
    readonly_fields = ("user", "provider", "issuer", "subject", "email", "groups", "deactivated_by_sync",
                       "first_signin", "last_signin")
