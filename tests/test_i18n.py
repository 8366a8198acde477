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
from django.conf import settings
from django.utils import timezone
from django.utils.html import escape

from tasks.models import PublishedMessage, TaskRecord, TaskStatus

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


# --- the admin's own words: model and field names, columns, filters, actions -----
# What the task history's changelist and a task's page show, as each language says it.
ADMIN = {
    "en": {
        "model": "task record",
        "columns": ["Id", "Status", "Task", "Queue", "Priority", "Attempts", "Progress", "Duration", "Delayed until", "Finished"],
        "filters": ["status", "queue", "task", "enqueued", "priority", "delayed until"],
        "choices": ["Past hour", "Older than 30 days", "above 0", "still delayed"],
        "action": "Re-enqueue selected failed/dead tasks (same id)",
        "labels": ["Enqueued at:", "Cancel requested:", "Latest error:", "Every failed attempt:"],
        "sections": ["Times", "Call", "Outcome"],
        "help": "Runs started, crashed runs included.",
        "status": "Successful",
        "index": ["Task records", "Published messages", "Received messages", "Schedules"],
    },
    "ko": {
        "model": "작업 기록",
        "columns": ["ID", "상태", "작업", "큐", "우선순위", "시도 횟수", "진행률", "소요 시간", "지연 종료", "완료"],
        "filters": ["상태", "큐", "작업", "큐에 넣음", "우선순위", "지연 종료"],
        "choices": ["지난 1시간", "30일보다 오래됨", "0보다 큼", "아직 지연됨"],
        "action": "선택한 실패/죽은 작업을 다시 큐에 넣기 (같은 ID)",
        "labels": ["큐에 넣은 시각:", "취소 요청됨:", "최근 오류:", "실패한 모든 시도:"],
        "sections": ["시각", "호출", "결과"],
        "help": "시작된 실행 횟수 (비정상 종료된 실행 포함).",
        "status": "성공",
        "index": ["작업 기록", "발행된 메시지", "수신된 메시지", "일정"],
    },
    "zh-hans": {
        "model": "任务记录",
        "columns": ["ID", "状态", "任务", "队列", "优先级", "尝试次数", "进度", "耗时", "延迟至", "完成"],
        "filters": ["状态", "队列", "任务", "入队时间", "优先级", "延迟至"],
        "choices": ["过去一小时", "30 天以前", "大于 0", "仍在延迟"],
        "action": "将所选失败/死亡任务重新入队（相同 ID）",
        "labels": ["入队时间:", "已请求取消:", "最近的错误:", "每次失败的尝试:"],
        "sections": ["时间", "调用", "结果"],
        "help": "已开始的运行次数（包括崩溃的运行）。",
        "status": "成功",
        "index": ["任务记录", "已发布消息", "已接收消息", "计划"],
    },
}
COLUMN = re.compile(r'<th scope="col" class="[^"]*column-\w+">\s*<div class="text">(?:<a [^>]*>|<span>)([^<]*)<')
FILTER = re.compile(r'<details data-filter-title="([^"]*)"')
HEADING = re.compile(r"<h1>([^<]*)</h1>")


@pytest.mark.django_db
@pytest.mark.parametrize("language", LANGUAGES)
def test_the_task_history_changelist_speaks_the_browsers_language(staff_client, language):
    words = ADMIN[language]
    page = staff_client.get("/admin/tasks/taskrecord/", HTTP_ACCEPT_LANGUAGE=language).content.decode()
    assert words["model"] in HEADING.search(page).group(1)
    assert COLUMN.findall(page) == words["columns"]
    assert FILTER.findall(page) == words["filters"]
    for text in [*words["choices"], words["action"], words["status"]]:
        assert f">{text}<" in page, text


@pytest.mark.django_db
@pytest.mark.parametrize("language", LANGUAGES)
def test_a_tasks_admin_page_speaks_the_browsers_language(staff_client, language):
    words = ADMIN[language]
    page = staff_client.get("/admin/tasks/taskrecord/i18n-task/change/", HTTP_ACCEPT_LANGUAGE=language).content.decode()
    assert words["model"] in HEADING.search(page).group(1)
    for label in words["labels"]:
        assert f"<label>{label}</label>" in page, label
    for section in words["sections"]:
        assert re.search(rf"<(h2|legend)[^>]*>{re.escape(section)}</(h2|legend)>", page), section
    assert f"<div>{words['help']}</div>" in page
    assert f'<div class="readonly">{words["status"]}</div>' in page


# A row's page is titled with the row itself (its __str__): the <title>, the
# subtitle and the last breadcrumb, in the reader's language too.
TITLES = {
    "en": {"task": "tasks.tasks.add [i18n-task] Successful", "message": "orders: tea and cake -> 2 listeners"},
    "ko": {"task": "tasks.tasks.add [i18n-task] 성공", "message": "orders: tea and cake -> 리스너 2개"},
    "zh-hans": {"task": "tasks.tasks.add [i18n-task] 成功", "message": "orders: tea and cake -> 2 个监听者"},
}


def _assert_titled(page, title):
    title = escape(title)
    assert f"<title>{title} | " in page
    assert f"<h2>{title}</h2>" in page
    # The breadcrumbs' last step: Django 5.2 writes `&rsaquo; title</div>`, 6.x `<li aria-current="page">title</li>`.
    crumb = r'<div class="breadcrumbs">.*&rsaquo; ' + re.escape(title) + r"\s*</div>"
    crumb_6 = r'<ol class="breadcrumbs">.*<li aria-current="page">' + re.escape(title) + r"</li>"
    assert re.search(crumb, page, re.S) or re.search(crumb_6, page, re.S)


@pytest.mark.django_db
@pytest.mark.parametrize("language", LANGUAGES)
def test_a_rows_admin_title_and_breadcrumb_speak_the_browsers_language(staff_client, language):
    message = PublishedMessage.objects.create(channel="orders", payload="tea and cake", published_at=timezone.now(), receivers=2)
    pages = {
        "task": "/admin/tasks/taskrecord/i18n-task/change/",
        "message": f"/admin/tasks/publishedmessage/{message.pk}/change/",
    }
    for row, path in pages.items():
        page = staff_client.get(path, HTTP_ACCEPT_LANGUAGE=language).content.decode()
        _assert_titled(page, TITLES[language][row])


@pytest.mark.django_db
def test_a_rows_admin_title_follows_the_language_cookie(staff_client):
    staff_client.cookies[settings.LANGUAGE_COOKIE_NAME] = "ko"
    page = staff_client.get("/admin/tasks/taskrecord/i18n-task/change/", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    _assert_titled(page, TITLES["ko"]["task"])


@pytest.mark.django_db
@pytest.mark.parametrize("language", LANGUAGES)
def test_the_schedules_last_outcome_is_the_task_lists_badge_in_the_browsers_language(staff_client, language):
    from django.test import override_settings

    from tasks.schedules.models import ScheduleState

    ScheduleState.objects.create(name="nightly", last_task_id="i18n-task")  # the SUCCESSFUL row of staff_client
    with override_settings(MQ_SCHEDULES={"nightly": {"task": "tasks.tasks.noop", "cron": "0 3 * * *"}}):
        page = staff_client.get("/admin/tasks/schedulestate/", HTTP_ACCEPT_LANGUAGE=language).content.decode()
    badge = f'<span class="mq-status mq-status-successful">{ADMIN[language]["status"]}</span>'
    assert re.findall(r'<td class="field-last_outcome">(.*?)</td>', page) == [badge]
    # The same markup as the task list's status column.
    tasks = staff_client.get("/admin/tasks/taskrecord/", HTTP_ACCEPT_LANGUAGE=language).content.decode()
    assert f'<td class="field-status_badge">{badge}</td>' in tasks


@pytest.mark.no_redis
def test_one_listener_is_said_in_the_singular_in_each_language():
    from django.utils import translation

    message = PublishedMessage(channel="c", payload="hi", published_at=timezone.now(), receivers=1)
    said = {"en": "c: hi -> 1 listener", "ko": "c: hi -> 리스너 1개", "zh-hans": "c: hi -> 1 个监听者"}
    for language, text in said.items():
        with translation.override(language):
            assert str(message) == text


@pytest.mark.django_db
@pytest.mark.parametrize("language", LANGUAGES)
def test_the_admin_index_names_every_model_in_the_browsers_language(staff_client, language):
    page = staff_client.get("/admin/", HTTP_ACCEPT_LANGUAGE=language).content.decode()
    for name in ADMIN[language]["index"]:
        assert f">{name}</a>" in page, name


# Words a catalog keeps as they are: a cron expression is a cron expression, and
# the Chinese catalog's pages (index, task) already say "worker" as the term.
KEPT_AS_IS = {"ko": {"cron"}, "zh-hans": {"cron", "worker"}}


def _admin_words():
    """Every word of our models the admin shows, and each column, filter and
    action of our admins: (where, lazy text) pairs."""
    from django.apps import apps
    from django.contrib import admin
    from django.contrib.admin.utils import label_for_field

    yield "the app's name (admin index, breadcrumbs)", apps.get_app_config("tasks").verbose_name
    for model in apps.get_app_config("tasks").get_models():
        yield f"{model.__name__} name", model._meta.verbose_name
        yield f"{model.__name__} plural", model._meta.verbose_name_plural
        for field in model._meta.get_fields():
            if field.auto_created or not field.concrete:
                continue
            yield f"{model.__name__}.{field.name}", field.verbose_name
            if field.help_text:
                yield f"{model.__name__}.{field.name} help", field.help_text
        model_admin = admin.site._registry.get(model)
        if model_admin is None:
            continue
        for name in model_admin.list_display:
            yield f"{model.__name__} column {name}", lambda n=name, m=model, a=model_admin: label_for_field(n, m, a)
        for list_filter in model_admin.list_filter:
            if isinstance(list_filter, type):
                yield f"{model.__name__} filter {list_filter.__name__}", list_filter.title
        for action in model_admin.actions:
            yield f"{model.__name__} action {action}", getattr(model_admin, action).short_description


@pytest.mark.no_redis
@pytest.mark.parametrize("language", ["ko", "zh-hans"])
def test_no_word_of_our_admin_is_left_in_english(language):
    from django.utils import translation

    for where, text in _admin_words():
        read = text if callable(text) else (lambda t=text: str(t))
        with translation.override("en"):
            english = str(read())
        with translation.override(language):
            translated = str(read())
        if english not in KEPT_AS_IS[language]:
            assert translated != english, f"{where}: {english!r} is not translated"
