"""Refusals shared by the pages and the JSON API: the JSON error every API
answer uses, and the one way to say "not now, retry in N seconds"."""

import logging

from django.http import JsonResponse

from tasks.conf import mq_settings

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """A refusal the API answers as JSON ``{"error": message}``."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}

    def response(self):
        response = JsonResponse({"error": self.message}, status=self.status)
        for name, value in self.headers.items():
            response[name] = value
        return response


def retry_later(request, exc, respond, event):
    """A 503 with Retry-After for a request refused because a dependency did
    not take it (nothing was done): ``respond(seconds)`` builds the body, for
    a person or a program, from the seconds to wait."""
    logger.warning("event=%s path=%s error=%r", event, request.path, str(exc))
    seconds = mq_settings.MQ_RETRY_AFTER_SECONDS
    response = respond(seconds)
    response.status_code = 503
    response["Retry-After"] = str(seconds)
    return response
