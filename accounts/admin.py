from django.contrib import admin
from django.contrib.auth.admin import UserAdmin
from rest_framework.authtoken.models import TokenProxy

from accounts.models import User

# DRF's token admin shows every user's API key in clear text: anyone with "view token" could act as
# a reviewer and the audit trail would name the reviewer. Tokens are managed on each user's profile.
if admin.site.is_registered(TokenProxy):
    admin.site.unregister(TokenProxy)


@admin.register(User)
class LabUserAdmin(UserAdmin):
    list_display = ("username", "email", "first_name", "last_name", "role_label", "is_active", "last_login")
    list_filter = ("groups", "is_staff", "is_superuser", "is_active")

    @admin.display(description="Role")
    def role_label(self, obj):
        return obj.role_label
