"""``{{ moment|ago }}``: a time as people read it ("3 s ago"), with the exact
ISO time on hover and in ``datetime`` for machines. static/tasks/ages.js
recounts the ages every second from that attribute, with the same wording
(the formats ride on <body>, see base.html)."""

from datetime import UTC, datetime

from django import template
from django.utils.html import format_html
from django.utils.translation import gettext, pgettext

register = template.Library()

# The formats the page and its script share: "%(n)s" is the number.
FORMATS = {
    "s_ago": lambda: gettext("%(n)s s ago"),
    "min_ago": lambda: gettext("%(n)s min ago"),
    "h_ago": lambda: gettext("%(n)s h ago"),
    "s_in": lambda: gettext("in %(n)s s"),
    "min_in": lambda: gettext("in %(n)s min"),
    "h_in": lambda: gettext("in %(n)s h"),
}


def _moment(value):
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def age_text(moment, now):
    """The words for how far ``moment`` is from ``now``, in the active language."""
    seconds = (now - moment).total_seconds()
    direction = "ago" if seconds >= 0 else "in"
    seconds = abs(seconds)
    if seconds < 120:
        unit, n = "s", int(seconds)
    elif seconds < 7200:
        unit, n = "min", int(seconds // 60)
    else:
        unit, n = "h", int(seconds // 3600)
    return FORMATS[f"{unit}_{direction}"]() % {"n": n}


@register.filter
def ago(value, now=None):
    """A <time> element for a datetime or an ISO string; the value itself when it is neither."""
    if value in (None, ""):
        return pgettext("no time", "—")
    moment = _moment(value)
    if moment is None:
        return value
    iso = moment.isoformat(timespec="seconds")
    return format_html('<time datetime="{}" title="{}">{}</time>', iso, iso, age_text(moment, now or datetime.now(UTC)))


@register.simple_tag
def age_formats():
    """The data-ago-* attributes of <body>, for ages.js."""
    return format_html(" ".join(f'data-ago-{key.replace("_", "-")}="{{}}"' for key in FORMATS), *(f() for f in FORMATS.values()))
