"""Who may do what, in one place (services and selectors ask here)."""

from accounts.roles import REVIEWER, TECHNOLOGIST


def _roles(user) -> set[str]:
    if not user.is_authenticated or not user.is_active:
        return set()
    cached = getattr(user, "_hv_roles", None)
    if cached is None:
        cached = set(user.groups.values_list("name", flat=True))
        user._hv_roles = cached
    return cached


def can_review(user) -> bool:
    """Reviewers and superusers review, sign, and see every result."""
    return bool(user.is_authenticated and user.is_active and (user.is_superuser or REVIEWER in _roles(user)))


def can_submit(user) -> bool:
    """Technologists and reviewers submit images; users without a role do nothing."""
    return can_review(user) or TECHNOLOGIST in _roles(user)
