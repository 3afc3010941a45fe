"""Token sign-in for LIS clients (throttled, locked out like the portal's sign-in)."""


from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    extend_schema,
)
from rest_framework import permissions, status
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser

from classifier.api.schema import error_response
from classifier.api.serializers import (
    TokenRequestSerializer,
    TokenSerializer,
)
from classifier.api.throttling import TokenRateThrottle
from classifier.api.views.base import JSONErrorsMixin


@extend_schema(
    tags=["auth"],
    summary="Get an API token",
    description="Exchange a username and password for the user's API token (created on first use). "
    "Send it as `Authorization: Token <token>`. Repeated failures lock the account for a while.",
    # One request body type in the schema (JSON), so generated clients have one model for it; form
    # posts are still parsed (issue 19: three identical bodies broke openapi-python-client).
    request={"application/json": TokenRequestSerializer},
    responses={
        200: OpenApiResponse(
            TokenSerializer,
            examples=[OpenApiExample("token", value={"token": "9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b"})],
        ),
        400: error_response(
            "Missing fields or wrong username/password.",
            "authorization",
            "Unable to log in with provided credentials.",
        ),
        429: error_response(
            "Too many attempts from this address, or the account is locked out.",
            "locked_out",
            "Too many failed sign-in attempts; try again later.",
        ),
    },
    auth=[],
)
class TokenView(JSONErrorsMixin, ObtainAuthToken):
    """``POST /api/v1/auth/token/``: DRF's token view, throttled per client address.

    DRF's AuthTokenSerializer passes the request to ``authenticate()``, which
    django-axes needs to count failures per username and address.
    """

    serializer_class = TokenRequestSerializer
    throttle_classes = [TokenRateThrottle]
    permission_classes = [permissions.AllowAny]
    authentication_classes = []
    parser_classes = [JSONParser, FormParser, MultiPartParser]

    def post(self, request, *args, **kwargs):
        try:
            return super().post(request, *args, **kwargs)
        except ValidationError:
            # authenticate() swallows axes' PermissionDenied; axes marks the request instead.
            if getattr(request, "axes_locked_out", False):
                raise LockedOut() from None
            raise


class LockedOut(APIException):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_detail = "Too many failed sign-in attempts; try again later."
    default_code = "locked_out"
