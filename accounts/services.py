"""Writes for accounts."""

from django.db import transaction
from rest_framework.authtoken.models import Token

from accounts.models import User


@transaction.atomic
def token_regenerate(*, user: User) -> tuple[Token, bool]:
    """Replace (or issue) the user's API token; an old one stops working at once.
    Returns the new token and whether it replaced one."""
    replaced, _ = Token.objects.filter(user=user).delete()
    return Token.objects.create(user=user), bool(replaced)


def token_get(*, user: User) -> Token | None:
    """The user's API token, if one was issued (a page view never creates one)."""
    return Token.objects.filter(user=user).first()
