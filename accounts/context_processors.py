"""Template context: the signed-in user's role, for the navigation bar."""


def roles(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"user_role": user.role_label, "user_is_reviewer": user.is_reviewer}
