"""Who may call: the API's bearer tokens, and the networks that may read
/metrics without one."""

import hmac
import ipaddress

from tasks.conf import mq_settings
from tasks.web.errors import ApiError

CHALLENGE = 'Bearer realm="mqsite"'
# Headers a reverse proxy adds. Behind one on the same host every request
# arrives from 127.0.0.1, so only a request without them is really local.
PROXY_HEADERS = (
    "HTTP_FORWARDED",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_REAL_IP",
)


def authenticate(request):
    """The name of the token the request carries; ApiError 401 if none."""
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise ApiError(401, "authentication required: send 'Authorization: Bearer <token>'", {"WWW-Authenticate": CHALLENGE})
    match = None
    # Compare with every token, without stopping early, in constant time each:
    # the response time says nothing about how close a guess was.
    for known, name in mq_settings.api_tokens().items():
        if hmac.compare_digest(known.encode(), presented.encode()):
            match = name
    if match is None:
        raise ApiError(401, "invalid token", {"WWW-Authenticate": f'{CHALLENGE}, error="invalid_token"'})
    return match


def may_read_metrics(request):
    """A direct request from an allowed network, or one with an API token."""
    if _from_allowed_network(request):
        return True
    try:
        authenticate(request)
    except ApiError:
        return False
    return True


def _from_allowed_network(request):
    if any(request.META.get(header) for header in PROXY_HEADERS):
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:  # ::ffff:127.0.0.1 on a dual-stack socket
        address = address.ipv4_mapped
    for entry in mq_settings.MQ_METRICS_ALLOW:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except (TypeError, ValueError):
            continue  # reported by `manage.py check`; never widens access
    return False
