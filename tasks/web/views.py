"""The HTML pages: an index with live figures, the two trigger pages, and
one task's page.

GET never changes anything and is open to all; a POST acts only for a
logged-in user with the page's permission (the JSON API asks a token for
the same actions), does its one thing and redirects (303, so a reload does
not repeat it). When Redis refuses, the page says so with a 503 and
Retry-After, and nothing was written.
"""

from pathlib import Path
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import ngettext
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_http_methods, require_safe

from tasks.channel import publish as pubsub
from tasks.conf import mq_settings
from tasks.web.forms import ProdconsForm, PubsubForm
from tasks.exceptions import ChannelUnavailable, QueueFull, QueueUnavailable
from tasks.models import FINAL_STATUSES, TaskRecord
from tasks.storable import unstorable
from tasks.web.errors import retry_later
from tasks.web.status import next_firings, read_snapshot
from tasks.tasks import cook_dish

# A message names at most this many task ids; the admin lists the rest.
LINKED_IDS = 10
FAVICON = Path(__file__).resolve().parent.parent / "static" / "tasks" / "favicon.svg"

# What a user needs to act on each trigger page: adding the row it writes.
ENQUEUE_PERMISSION = "tasks.add_taskrecord"
PUBLISH_PERMISSION = "tasks.add_publishedmessage"
# A task's page shows its arguments and result: who may read the history may read it.
VIEW_PERMISSION = "tasks.view_taskrecord"
# Seconds between reloads of an unfinished task's page (no script needed).
TASK_PAGE_REFRESH = 2


class HttpResponseSeeOther(HttpResponseRedirect):
    status_code = 303


@require_safe
def index(request):
    snapshot = read_snapshot()
    # Without Redis the page still shows the history, which lives in the database.
    snapshot.raise_if_down(redis=False)
    context = {"status": snapshot.as_status(), "redis_down": not snapshot.redis_up, "next_firings": next_firings(snapshot.schedules)}
    return render(request, "index.html", context)


@require_safe
@cache_control(public=True, max_age=24 * 3600)
def favicon(request):
    """Browsers ask every site for /favicon.ico, whatever its pages link to."""
    return FileResponse(FAVICON.open("rb"), content_type="image/svg+xml")


@require_http_methods(["GET", "HEAD", "POST"])
def prodcons(request):
    if request.method != "POST":
        context = {"form": ProdconsForm(), "may_act": request.user.has_perm(ENQUEUE_PERMISSION)}
        return render(request, "prodcons.html", context)
    if refusal := _refuse_unless_permitted(request, ENQUEUE_PERMISSION):
        return refusal
    form = ProdconsForm(request.POST)
    context = {"form": form, "may_act": True}
    if not form.is_valid():
        return render(request, "prodcons.html", context)
    number, count = form.cleaned_data["number"], form.cleaned_data["count"]
    args = () if number is None else (number,)
    try:
        # One INSERT and one push for all of them: either every task is
        # queued or, when Redis refuses, none is and no row is left.
        # settings.TASKS names RedisTaskBackend, which adds enqueue_many to the API.
        results = cook_dish.get_backend().enqueue_many(cook_dish, [(args, {})] * count)  # type: ignore[attr-defined]
    except QueueUnavailable as exc:
        return _unavailable(request, "prodcons.html", context, exc)
    messages.success(request, _enqueued_message([result.id for result in results]))
    return HttpResponseSeeOther(reverse("tasks:prodcons"))


@require_http_methods(["GET", "HEAD", "POST"])
def pubsub_page(request):
    # Only staff pick the channel: others could reach handlers on channels
    # the demo was never meant to feed.
    choose_channel = request.user.is_staff
    if request.method != "POST":
        context = {
            "form": PubsubForm(choose_channel=choose_channel),
            "default_channel": mq_settings.MQ_DEFAULT_CHANNEL,
            "may_act": request.user.has_perm(PUBLISH_PERMISSION),
        }
        return render(request, "pubsub.html", context)
    if refusal := _refuse_unless_permitted(request, PUBLISH_PERMISSION):
        return refusal
    form = PubsubForm(request.POST, choose_channel=choose_channel)
    context = {"form": form, "default_channel": mq_settings.MQ_DEFAULT_CHANNEL, "may_act": True}
    if not form.is_valid():
        return render(request, "pubsub.html", context)
    channel = form.cleaned_data.get("channel", mq_settings.MQ_DEFAULT_CHANNEL)
    publisher = f"user:{request.user.get_username()}"
    try:
        receivers = pubsub.publish(form.cleaned_data["message"], channel, publisher=publisher)
    except ChannelUnavailable as exc:
        return _unavailable(request, "pubsub.html", context, exc)
    except ValueError as exc:  # the publisher refused it (too large); nothing was sent
        form.add_error("message", str(exc))
        return render(request, "pubsub.html", context)
    text = ngettext(
        "Published to %(channel)s: received by %(n)d listener.",
        "Published to %(channel)s: received by %(n)d listeners.",
        receivers,
    ) % {"channel": channel, "n": receivers}
    if receivers:
        messages.success(request, text)
    else:
        # Publish/subscribe keeps nothing: with nobody listening it is gone.
        messages.warning(request, f"{text} Nobody was listening, so the message is lost; start manage.py listen_channel.")
    return HttpResponseSeeOther(reverse("tasks:pubsub"))


def _refuse_unless_permitted(request, permission):
    """The response to someone who may not act (or read a task), or None if they may.

    Anonymous users go to the login page and come back here (?next=); a
    logged-in user without the permission gets 403.
    """
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if not request.user.has_perm(permission):
        raise PermissionDenied(f"{permission} is needed to act on {request.path}")
    return None


def _unavailable(request, template, context, exc):
    if isinstance(exc, QueueFull):
        reason = "The queue is full right now."
    else:
        reason = "Redis, which carries the queues and channels, is not answering."

    def page(seconds):
        notice = f"{reason} Nothing was sent. Please try again in {seconds} seconds."
        return render(request, template, {**context, "unavailable": notice})

    return retry_later(request, exc, page, "page_refused")


def _enqueued_message(ids):
    links = format_html_join(
        ", ",
        '<a href="{}">{}</a>',
        ((reverse("admin:tasks_taskrecord_change", args=[task_id]), task_id) for task_id in ids[:LINKED_IDS]),
    )
    if len(ids) == 1:
        return format_html("Enqueued task {} with id {}.", cook_dish.module_path, links)
    more = len(ids) - LINKED_IDS
    if more > 0:
        history = reverse("admin:tasks_taskrecord_changelist") + "?" + urlencode({"task_path": cook_dish.module_path})
        return format_html(
            'Enqueued {} {} tasks: {} and <a href="{}">{} more</a>.', len(ids), cook_dish.module_path, links, history, more
        )
    return format_html("Enqueued {} {} tasks: {}.", len(ids), cook_dish.module_path, links)


@require_safe
def task_page(request, task_id):
    """One task: status (reloading itself until final), progress, attempts
    with each one's worker and error, timings, result or error."""
    if refusal := _refuse_unless_permitted(request, VIEW_PERMISSION):
        return refusal
    record = None if unstorable(task_id) else TaskRecord.objects.filter(id=task_id).first()
    if record is None:
        raise Http404("no such task")
    final = record.status in FINAL_STATUSES
    duration = (record.finished_at - record.started_at).total_seconds() if final and record.started_at and record.finished_at else None
    context = {
        "task": record,
        "final": final,
        "duration": duration,
        "refresh": None if final else TASK_PAGE_REFRESH,
        "progress": record.progress,
    }
    return render(request, "task.html", context)
