"""The lab's user model: Django's user, with roles read from its groups."""

from django.contrib.auth.models import AbstractUser

from accounts.roles import REVIEWER, TECHNOLOGIST


class User(AbstractUser):
    """A member of lab staff. Admins are staff/superusers; roles are groups."""

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"

    def has_role(self, role: str) -> bool:
        return self.is_active and self.groups.filter(name=role).exists()

    @property
    def is_reviewer(self) -> bool:
        """Reviewers (and admins) see every result and may review and sign."""
        return self.is_superuser or self.has_role(REVIEWER)

    @property
    def is_technologist(self) -> bool:
        return self.has_role(TECHNOLOGIST)

    @property
    def role_label(self) -> str:
        roles = [name for name in self.groups.values_list("name", flat=True).order_by("name")]
        if self.is_superuser or self.is_staff:
            roles.insert(0, "Admin")
        return ", ".join(roles) or "No role"
