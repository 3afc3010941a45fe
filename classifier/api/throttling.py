"""Per-user throttles (settings ``DEFAULT_THROTTLE_RATES``) plus tighter scopes for costly calls."""

from rest_framework.throttling import SimpleRateThrottle, UserRateThrottle


class UploadRateThrottle(UserRateThrottle):
    """Image uploads run the model: rate ``uploads`` per user."""

    scope = "uploads"


class TokenRateThrottle(SimpleRateThrottle):
    """Password guessing on the token endpoint: rate ``token`` per client address, signed in or not.

    The address is REMOTE_ADDR, or with ``NUM_PROXIES`` (HEMATOVISION_NUM_PROXIES) trusted proxies
    the one they put in X-Forwarded-For; a client's own X-Forwarded-For never changes it.
    """

    scope = "token"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
