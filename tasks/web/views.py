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
from django.http import FileResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext as _, ngettext
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_http_methods, require_safe

from tasks.channel import publish as pubsub
from tasks.conf import mq_settings
from tasks.models import TaskRecord
from tasks.web.forms import ProdconsForm, PubsubForm
from tasks.exceptions import ChannelUnavailable, QueueFull, QueueUnavailable
from tasks.web.access import refuse_unless_permitted
from tasks.web.errors import retry_later
from tasks.tasks import cook_dish

# A message names at most this many task ids; the admin lists the rest.
LINKED_IDS = 10
FAVICON = Path(__file__).resolve().parent.parent / "static" / "tasks" / "favicon.svg"

# Session keys carrying a POST's outcome to the page after its 303.
NEW_TASKS, PUBLISHED = "mq_new_tasks", "mq_published"
# What a user needs to act on each trigger page: adding the row it writes.
ENQUEUE_PERMISSION = "tasks.add_taskrecord"
PUBLISH_PERMISSION = "tasks.add_publishedmessage"


class HttpResponseSeeOther(HttpResponseRedirect):
    status_code = 303


@require_safe
@cache_control(public=True, max_age=24 * 3600)
def favicon(request):
    """Browsers ask every site for /favicon.ico, whatever its pages link to."""
    return FileResponse(FAVICON.open("rb"), content_type="image/svg+xml")


@require_http_methods(["GET", "HEAD", "POST"])
def prodcons(request):
    if request.method != "POST":
        context = {"form": ProdconsForm(), "may_act": request.user.has_perm(ENQUEUE_PERMISSION), "new_tasks": _new_tasks(request)}
        return render(request, "prodcons.html", context)
    if refusal := refuse_unless_permitted(request, ENQUEUE_PERMISSION):
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
    ids = [result.id for result in results]
    messages.success(request, _enqueued_message(ids))
    # The page after the redirect lists these with their live status; the
    # session carries them across the 303, and the next GET forgets them.
    request.session[NEW_TASKS] = ids[:LINKED_IDS]
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
            "published": request.session.pop(PUBLISHED, None),
        }
        return render(request, "pubsub.html", context)
    if refusal := refuse_unless_permitted(request, PUBLISH_PERMISSION):
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
    request.session[PUBLISHED] = {"channel": channel, "receivers": receivers, "text": text}
    if not receivers:
        # Publish/subscribe keeps nothing: with nobody listening it is gone.
        messages.warning(request, _("Nobody was listening, so the message is lost; start manage.py listen_channel."))
    return HttpResponseSeeOther(reverse("tasks:pubsub"))


def _unavailable(request, template, context, exc):
    if isinstance(exc, QueueFull):
        reason = _("The queue is full right now.")
    else:
        reason = _("Redis, which carries the queues and channels, is not answering.")

    def page(seconds):
        notice = _("%(reason)s Nothing was sent. Please try again in %(seconds)s seconds.") % {"reason": reason, "seconds": seconds}
        return render(request, template, {**context, "unavailable": notice})

    return retry_later(request, exc, page, "page_refused")


def _enqueued_message(ids):
    links = format_html_join(
        ", ",
        '<a href="{}">{}</a>',
        ((reverse("tasks:task", args=[task_id]), task_id) for task_id in ids[:LINKED_IDS]),
    )
    task = cook_dish.module_path
    # The translated sentence is a format_html template: {} are its (escaped) parts.
    if len(ids) == 1:
        return format_html(_("Enqueued task {task} with id {links}."), task=task, links=links)
    more = len(ids) - LINKED_IDS
    if more > 0:
        history = reverse("admin:tasks_taskrecord_changelist") + "?" + urlencode({"task_path": task})
        return format_html(
            _('Enqueued {count} {task} tasks: {links} and <a href="{history}">{more} more</a>.'),
            count=len(ids), task=task, links=links, history=history, more=more,
        )
    return format_html(_("Enqueued {count} {task} tasks: {links}."), count=len(ids), task=task, links=links)


def _new_tasks(request):
    """The tasks the last POST of this session enqueued, with their status now."""
    ids = request.session.pop(NEW_TASKS, None) or []
    rows = {row.id: row for row in TaskRecord.objects.filter(id__in=ids[:LINKED_IDS])}
    return [rows[task_id] for task_id in ids if task_id in rows]
