"""Who may do what, in one place (services and selectors ask here)."""

from accounts.roles import INTERFACE, REVIEWER, TECHNOLOGIST


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


def is_interface(user) -> bool:
    """An LIS's account (the Interface role): orders, images and every result; no review, no sign-off."""
    return bool(user.is_authenticated and user.is_active and INTERFACE in _roles(user))


def can_read_all(user) -> bool:
    """Reviewers and interface accounts see every specimen and result."""
    return can_review(user) or is_interface(user)


def can_order(user) -> bool:
    """Who may place an LIS order (bind an accession to a patient): interface accounts, reviewers."""
    return can_read_all(user)


def can_submit(user) -> bool:
    """Technologists, reviewers and interface accounts submit images; users without a role do nothing."""
    return can_review(user) or TECHNOLOGIST in _roles(user) or is_interface(user)
