"""VAS logs in the admin (read-only)."""
from django.contrib import admin

from .models import VASLog


@admin.register(VASLog)
class VASLogAdmin(admin.ModelAdmin):
    list_display = ("id", "timestamp", "provider", "upstream_model", "status_code", "latency_ms", "cache")
    list_filter = ("provider", "cache", "status_code")
    search_fields = ("id", "client_model")
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
