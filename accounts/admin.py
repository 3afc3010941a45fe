from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from .models import User


@admin.register(User)
class LabUserAdmin(UserAdmin):
    list_display = ("username", "email", "first_name", "last_name", "role_label", "is_active", "last_login")
    list_filter = ("groups", "is_staff", "is_superuser", "is_active")

    @admin.display(description="Role")
    def role_label(self, obj):
        return obj.role_label
