"""The pages in English, Korean and Simplified Chinese: the catalogs are
complete and compiled, the browser's Accept-Language or the switcher picks
the language, and every page renders translated."""

import importlib.util
import re
from pathlib import Path

import polib
import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from tasks.models import TaskRecord, TaskStatus

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("compilemessages", ROOT / "scripts" / "compilemessages.py")
compilemessages = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compilemessages)

LANGUAGES = ("en", "ko", "zh-hans")
# One phrase of the base template and one of each page, as each language says it.
HEADER = {"en": "Publish / subscribe", "ko": "발행 / 구독", "zh-hans": "发布 / 订阅"}
PAGES = {
    "/": {"en": "Dead letters", "ko": "데드 레터", "zh-hans": "死信"},
    "/prodcons": {"en": "Enqueue", "ko": "큐에 넣기", "zh-hans": "入队"},
    "/pubsub": {"en": "Default channel:", "ko": "기본 채널:", "zh-hans": "默认频道："},
    "/accounts/login/": {"en": "Anyone may look around", "ko": "누구나 둘러볼 수 있지만", "zh-hans": "任何人都可以浏览"},
    "/tasks/i18n-task": {"en": "Attempts", "ko": "시도", "zh-hans": "尝试"},
}
PLACEHOLDER = re.compile(r"%\(\w+\)[sd]|%[sd]|\{\w*\}|<[^>]+>")


@pytest.mark.no_redis
@pytest.mark.parametrize("po_path", compilemessages.catalogs(), ids=lambda p: p.parent.parent.name)
def test_every_message_is_translated_with_the_same_placeholders_and_markup(po_path):
    po = polib.pofile(str(po_path))
    assert not po.metadata_is_fuzzy
    for entry in po:
        if entry.obsolete:
            continue
        translations = list(entry.msgstr_plural.values()) if entry.msgid_plural else [entry.msgstr]
        assert all(translations) and "fuzzy" not in entry.flags, entry.msgid
        for text in translations:
            assert sorted(PLACEHOLDER.findall(text)) == sorted(PLACEHOLDER.findall(entry.msgid)), entry.msgid


@pytest.mark.no_redis
@pytest.mark.parametrize("po_path", compilemessages.catalogs(), ids=lambda p: p.parent.parent.name)
def test_the_committed_mo_file_is_compiled_from_its_po_file(po_path):
    mo_path = po_path.with_suffix(".mo")
    assert mo_path.exists(), "run scripts/compilemessages.py"
    assert mo_path.read_bytes() == compilemessages.compiled(po_path), "stale: run scripts/compilemessages.py"


def test_both_catalogs_ship():
    assert {p.parent.parent.name for p in compilemessages.catalogs()} == {"ko", "zh_Hans"}


@pytest.fixture
def staff_client(db):
    user = User.objects.create_superuser("i18n", "i18n@example.com", "pw-i18n-123")
    client = Client()
    client.force_login(user)
    now = timezone.now()
    TaskRecord.objects.create(
        id="i18n-task", task_path="tasks.tasks.add", status=TaskStatus.SUCCESSFUL, enqueued_at=now,
        started_at=now, finished_at=now, attempts=1, worker="w1", result=5,
    )
    return client


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders_in_the_browsers_language(staff_client, redis_client, path, language):
    response = staff_client.get(path, HTTP_ACCEPT_LANGUAGE=f"{language},en;q=0.5")
    page = response.content.decode()
    assert response.status_code == 200
    assert f'<html lang="{language}">' in page
    assert HEADER[language] in page and PAGES[path][language] in page
    # The switcher of every page: a labelled select of the three languages, the current one selected.
    assert '<form id="language-switcher" method="post" action="/i18n/setlang/">' in page
    assert '<label for="language-select">' in page and 'id="language-submit"' in page
    assert f'<option value="{language}" lang="{language}" selected>' in page
    assert page.count('<option value="') >= 3 and 'name="csrfmiddlewaretoken"' in page[page.index('id="language-switcher"'):]


@pytest.mark.django_db
def test_the_switcher_sets_the_language_for_the_next_pages_and_needs_csrf(staff_client):
    strict = Client(enforce_csrf_checks=True)
    strict.get("/")
    token = strict.cookies["csrftoken"].value
    assert strict.post("/i18n/setlang/", {"language": "ko", "next": "/pubsub"}).status_code == 403
    response = strict.post("/i18n/setlang/", {"language": "ko", "next": "/pubsub", "csrfmiddlewaretoken": token})
    assert response.status_code == 302 and response["Location"] == "/pubsub"
    page = strict.get("/pubsub", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert '<html lang="ko">' in page and "기본 채널:" in page  # the cookie beats the browser's header
    # Somewhere else than this site is never a "next".
    response = strict.post("/i18n/setlang/", {"language": "zh-hans", "next": "https://evil.example/", "csrfmiddlewaretoken": token})
    assert response["Location"] == "/"


@pytest.mark.django_db
def test_an_unknown_language_falls_back_to_english(client):
    page = client.get("/pubsub", HTTP_ACCEPT_LANGUAGE="xx-YY").content.decode()
    assert '<html lang="en">' in page


@pytest.mark.django_db
def test_the_admin_follows_djangos_own_translations(staff_client):
    page = staff_client.get("/admin/", HTTP_ACCEPT_LANGUAGE="ko").content.decode()
    assert "로그아웃" in page  # Django's Korean for "Log out"
    page = staff_client.get("/admin/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "注销" in page or "登出" in page or "退出" in page


@pytest.mark.django_db
def test_ages_read_in_each_language_and_the_script_gets_the_same_wording(staff_client):
    for language, format_ in {"en": "%(n)s s ago", "ko": "%(n)s초 전", "zh-hans": "%(n)s 秒前"}.items():
        page = staff_client.get("/tasks/i18n-task", HTTP_ACCEPT_LANGUAGE=language).content.decode()
        assert re.search(r'<time datetime="[^"]+" title="[^"]+">' + re.escape(format_).replace("%\\(n\\)s", r"\d+"), page), language
        assert f'data-ago-s-ago="{format_}"' in page
