"""The JSON API: enqueue a task, read its status, publish, figures, health.

Every refusal is JSON ``{"error": "..."}``, decided in a fixed order: 401
token, 405 method, 413 size, 400 content, 503 Redis. Each check runs before
anything is written, so a refused call leaves no row and no Redis item.
"""

import functools
import inspect
import json
import logging
import math
from functools import wraps

from django.db import DatabaseError
from django.http import JsonResponse
from django.urls import Resolver404, resolve, reverse
from django.utils.cache import add_never_cache_headers
from django.views.decorators.csrf import csrf_exempt
from redis.exceptions import RedisError

from tasks.channel import publish as pubsub
from tasks import registry
from tasks.queue.envelope import MAX_PRIORITY, MIN_PRIORITY, valid_priority
from tasks.conf import mq_settings
from tasks.exceptions import ArgumentsNotStorable, MessageTooLarge, QueueFull, TaskAlreadyFinished, Unavailable
from tasks.queue.backend import cancel
from tasks.web.health import check_all
from tasks.models import TaskRecord
from tasks.web.auth import authenticate
from tasks.web.errors import ApiError, retry_later
from tasks.web import listing
from tasks.web.status import collect_status
from tasks.storable import unstorable

logger = logging.getLogger(__name__)

TASK_FIELDS = {"task", "args", "kwargs", "priority", "unique_key"}
MAX_UNIQUE_KEY = 200
MESSAGE_FIELDS = {"data", "channel"}


def api_view(methods, token=True, body=False):
    """Wrap a view with the checks every API call goes through, in order."""

    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            try:
                client = authenticate(request) if token else None
                if request.method not in methods:
                    raise ApiError(
                        405, f"method {request.method} is not allowed here; use {' or '.join(methods)}", {"Allow": ", ".join(methods)}
                    )
                # Only a POST has a body: GET on the same URL (/api/tasks) has none.
                payload = read_json_object(request) if body and request.method == "POST" else None
                return view(request, *args, client=client, payload=payload, **kwargs)
            except ApiError as exc:
                return exc.response()
            except (Unavailable, RedisError, DatabaseError) as exc:
                return unavailable(request, exc)

        # Token-authenticated and cookie-less: a browser never attaches the
        # token on its own, so a forged cross-site request cannot carry one,
        # and CSRF protection has nothing to protect here.
        return csrf_exempt(wrapper)

    return decorate


def read_json_object(request):
    """The request body as a dict, read no further than the size limit."""
    limit = mq_settings.MQ_API_MAX_BODY_BYTES
    too_large = ApiError(413, f"request body is larger than the limit of {limit} bytes")
    declared = request.META.get("CONTENT_LENGTH") or "0"
    try:
        declared = int(declared)
    except ValueError:
        raise ApiError(400, "Content-Length is not a number") from None
    if declared > limit:
        raise too_large
    # The header may be absent or wrong: count what actually arrives, and
    # stop one byte past the limit rather than buffering an endless body.
    raw = request.read(limit + 1)
    if len(raw) > limit:
        raise too_large
    if not raw:
        raise ApiError(400, "request body is empty: send a JSON object")
    try:
        data = json.loads(
            raw.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float, object_pairs_hook=_one_value_per_key
        )
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not UTF-8 text") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None
    except ValueError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    return data


def _one_value_per_key(pairs):
    # {"task": "a", "task": "b"} means b to Python's json and a to some
    # proxies and other parsers: refuse what two readers would read apart.
    data = dict(pairs)
    if len(data) < len(pairs):
        keys = [key for key, _value in pairs]
        repeated = next(key for key in keys if keys.count(key) > 1)
        raise ValueError(f"key {repeated[:100]!r} appears twice in one object")
    return data


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text):
    # 1e999 parses to inf, which JSON (and PostgreSQL's jsonb) cannot store.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def unavailable(request, exc):
    if isinstance(exc, QueueFull):
        message = f"queue is full: {exc}"
    elif isinstance(exc, DatabaseError):
        message = "the database is not answering; nothing was done"
    else:
        message = "Redis is not answering; nothing was done"
    return retry_later(
        request, exc, lambda seconds: ApiError(503, f"{message}. Retry in {seconds} seconds.").response(), "api_refused"
    )


def _reject_unknown_fields(payload, allowed):
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; expected {', '.join(sorted(allowed))}")


# --- endpoints ---------------------------------------------------------------
@api_view(["GET", "HEAD", "POST"], body=True)
def tasks_collection(request, client, payload):
    """/api/tasks: POST enqueues a task, GET lists the history."""
    if request.method == "POST":
        return create_task(request, client, payload)
    return list_tasks(request)


def list_tasks(request):
    filters, cursor, limit = listing.page_request(request.GET)
    rows, more = listing.page(filters, cursor, limit)
    next_url = None
    if more:
        query = request.GET.copy()
        query["cursor"] = listing.encode_cursor(rows[-1])
        next_url = request.build_absolute_uri(f"{request.path}?{query.urlencode()}")
    return JsonResponse({"results": [record.as_api_dict() for record in rows], "next": next_url})


def create_task(request, client, payload):
    _reject_unknown_fields(payload, TASK_FIELDS)
    path, args, kwargs = payload.get("task"), payload.get("args", []), payload.get("kwargs", {})
    if not isinstance(path, str) or not path:
        raise ApiError(400, "'task' must be the dotted path of a task, as a string")
    if not isinstance(args, list):
        raise ApiError(400, "'args' must be a JSON array")
    if not isinstance(kwargs, dict):
        raise ApiError(400, "'kwargs' must be a JSON object")
    # Looked up, never imported: only functions declared with @task can run.
    task = registry.get(path)
    if task is None:
        raise ApiError(400, f"unknown task {path[:200]!r}: not a registered task")
    _check_arguments(task, args, kwargs)
    task = _with_priority(task, payload)
    key = _unique_key(payload)
    try:
        if key is not None or mq_settings.task_is_unique(task.module_path):
            result, created = task.get_backend().enqueue_unique(task, args, kwargs, key=key)
        else:
            # Not task.enqueue(*args, **kwargs): a keyword named "self" would clash.
            result, created = task.get_backend().enqueue(task, args, kwargs), True
    except MessageTooLarge as exc:  # checked before the row is written
        raise ApiError(413, str(exc)) from None
    except ArgumentsNotStorable as exc:
        raise ApiError(400, str(exc)) from None
    logger.info("event=api_enqueue client=%s task=%s task_id=%s created=%s", client, path, result.id, created)
    # 200: a unique task's open copy, not a new task.
    response = JsonResponse({"id": result.id}, status=202 if created else 200)
    response["Location"] = reverse("tasks:api-task", args=[result.id])
    return response


def _with_priority(task, payload):
    """The task at the request's ``priority``, or at its own when none is given."""
    if "priority" not in payload:
        return task
    priority = payload["priority"]
    if not valid_priority(priority):
        raise ApiError(400, f"'priority' must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}")
    return task.using(priority=priority)


def _unique_key(payload):
    key = payload.get("unique_key")
    if key is not None and (not isinstance(key, str) or not key or len(key) > MAX_UNIQUE_KEY or unstorable(key)):
        raise ApiError(400, f"'unique_key' must be a non-empty string of at most {MAX_UNIQUE_KEY} characters")
    return key


def _check_arguments(task, args, kwargs):
    """Refuse a call the function could never accept, before a row exists."""
    signature = _signature(task.func)
    try:
        if task.takes_context:
            signature.bind(None, *args, **kwargs)
        else:
            signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise ApiError(400, f"arguments do not fit {task.module_path}: {exc}") from None


# inspect.signature() was a tenth of the view's own time in a profile of
# POST /api/tasks; a registered task's function never changes while the process runs.
_signature = functools.lru_cache(maxsize=1024)(inspect.signature)


@api_view(["GET", "HEAD"])
def task_detail(request, task_id, client, payload):
    return JsonResponse(_record(task_id).as_api_dict())


def _record(task_id):
    # An id no row can have (NUL: PostgreSQL refuses even to compare it) is
    # simply not there, rather than a database error.
    record = None if unstorable(task_id) else TaskRecord.objects.filter(id=task_id).first()
    if record is None:
        raise ApiError(404, f"no task with id {task_id[:100]!r}")
    return record


@api_view(["POST"])
def cancel_task(request, task_id, client, payload):
    """Cancel a task: 200 with its JSON (CANCELLED, or RUNNING with
    cancel_requested while it stops), 409 if it has finished already."""
    _record(task_id)
    try:
        cancel(task_id)
    except TaskAlreadyFinished as exc:
        raise ApiError(409, f"already finished: {exc}") from None
    logger.info("event=api_cancel client=%s task_id=%s", client, task_id)
    return JsonResponse(_record(task_id).as_api_dict())


@api_view(["POST"], body=True)
def publish_message(request, client, payload):
    _reject_unknown_fields(payload, MESSAGE_FIELDS)
    if "data" not in payload:
        raise ApiError(400, "'data' is required: the message to publish (any JSON value)")
    channel = payload.get("channel")
    try:
        receivers = pubsub.publish(payload["data"], channel, publisher=f"api:{client}")
    except MessageTooLarge as exc:
        raise ApiError(413, str(exc)) from None
    except (TypeError, ValueError) as exc:  # a bad channel name; nothing was published
        raise ApiError(400, str(exc)) from None
    logger.info("event=api_publish client=%s channel=%s receivers=%d", client, channel or "-", receivers)
    return JsonResponse({"receivers": receivers})


@api_view(["GET", "HEAD"], token=False)
def stats(request, client, payload):
    response = JsonResponse(collect_status())
    add_never_cache_headers(response)
    return response


@api_view(["GET", "HEAD"], token=False)
def healthz(request, client, payload):
    healthy, report = check_all()
    response = JsonResponse(report, status=200 if healthy else 503)
    add_never_cache_headers(response)
    return response


@csrf_exempt
def not_found(request):
    """Any other path under /api/: a JSON 404 like every API answer (never the
    HTML debug page), with a hint when only a trailing slash is in the way."""
    message = f"no API endpoint at {request.path[:200]}"
    bare = request.path_info.rstrip("/")
    if bare != request.path_info:
        try:
            if resolve(bare).func is not not_found:
                message += f"; did you mean {request.path.rstrip('/')[:200]}?"
        except Resolver404:
            pass
    return ApiError(404, message).response()
