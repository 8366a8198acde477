"""Who may act on (or read) a page: shared by the page views."""

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied


def refuse_unless_permitted(request, permission):
    """The response to someone who may not act (or read a task), or None if they may.

    Anonymous users go to the login page and come back here (?next=); a
    logged-in user without the permission gets 403.
    """
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if not request.user.has_perm(permission):
        raise PermissionDenied(f"{permission} is needed to act on {request.path}")
    return None
