"""Accessibility a person would check by hand, checked on every page in
every language: one h1 and headings in order, a label for every control,
the page's language, and WCAG AA contrast for the colours site.css sets."""

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from tasks.models import TaskRecord, TaskStatus

CSS = Path(__file__).resolve().parent.parent / "tasks" / "static" / "tasks"
PAGES = ["/", "/prodcons", "/pubsub", "/accounts/login/", "/tasks/a11y-task"]


class Outline(HTMLParser):
    """Headings, controls and labels of one page."""

    def __init__(self):
        super().__init__()
        self.headings, self.controls, self.labelled, self.open_labels = [], [], set(), 0
        self.html_lang = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "html":
            self.html_lang = a.get("lang")
        if re.fullmatch(r"h[1-6]", tag):
            self.headings.append(int(tag[1]))
        if tag == "label":
            self.open_labels += 1
            if a.get("for"):
                self.labelled.add(a["for"])
        if tag in ("input", "select", "textarea") and a.get("type") not in ("hidden", "submit"):
            self.controls.append((a.get("id"), a.get("aria-label"), self.open_labels > 0, a.get("name")))
        if tag == "button":
            self.controls.append(("button", a.get("aria-label") or "has text", True, a.get("name")))

    def handle_endtag(self, tag):
        if tag == "label":
            self.open_labels -= 1


@pytest.fixture
def visitors(db):
    staff = Client()
    staff.force_login(User.objects.create_superuser("a11y", "a11y@example.com", "pw-a11y-123"))
    now = timezone.now()
    TaskRecord.objects.create(id="a11y-task", task_path="tasks.tasks.add", status=TaskStatus.RUNNING, enqueued_at=now,
                              started_at=now, attempts=1, worker="w1", progress={"done": 1, "total": 2})
    return {"anonymous": Client(), "staff": staff}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("language", ["en", "ko", "zh-hans"])
@pytest.mark.parametrize("who", ["anonymous", "staff"])
@pytest.mark.parametrize("path", PAGES)
def test_headings_in_order_and_every_control_labelled(visitors, redis_client, path, who, language):
    response = visitors[who].get(path, HTTP_ACCEPT_LANGUAGE=language, follow=True)
    outline = Outline()
    outline.feed(response.content.decode())
    assert outline.html_lang == language
    assert outline.headings.count(1) == 1 and outline.headings[0] == 1
    for before, after in zip(outline.headings, outline.headings[1:]):
        assert after <= before + 1, f"h{before} then h{after} on {path}"
    for control_id, aria_label, inside_label, name in outline.controls:
        assert aria_label or inside_label or control_id in outline.labelled, f"unlabelled {name} on {path}"


def luminance(hex_colour):
    channels = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a, b):
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.mark.no_redis
@pytest.mark.parametrize("sheet", ["site.css", "admin.css"])
def test_every_background_and_text_colour_pair_meets_wcag_aa(sheet):
    rules = re.findall(r"([^{}]+)\{([^}]*)\}", (CSS / sheet).read_text())
    pairs = []
    for selector, body in rules:
        background = re.search(r"background:\s*(#[0-9a-fA-F]{6})", body)
        colour = re.search(r"(?<![-\w])color:\s*(#[0-9a-fA-F]{6})", body)
        if background and colour:
            pairs.append((selector.strip(), background.group(1), colour.group(1)))
    assert len(pairs) >= 4
    for selector, background, colour in pairs:
        assert contrast(background, colour) >= 4.5, f"{selector}: {colour} on {background} is {contrast(background, colour):.2f}:1"


@pytest.mark.no_redis
def test_the_contrast_arithmetic_matches_wcags_examples():
    assert round(contrast("#000000", "#ffffff"), 1) == 21.0
    assert round(contrast("#767676", "#ffffff"), 2) == 4.54  # the lightest grey that passes AA on white
