"""The site in a real browser: Debian's Chromium driven by Playwright against
gunicorn, a listen_queue and a listen_channel (tests/live_site.py).

The pages' ids and data attributes are the ones /work/wt/DOM-CONTRACT.md
fixes, so these tests read no translated text to find things: they pass in
any language. Screenshots of every main page go to var/screenshots/.
"""

import os
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from tasks.models import TaskRecord, TaskStatus
from tasks.tasks import cook_dish
from tests.fixture_tasks import append_to_file, sleep_for
from tests.live_site import LiveSite
from tests.processes import wait_for

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "var" / "screenshots"
VIEWPORTS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}
PASSWORD = "browser-test-password"
# Long enough for a page to show a task's status live while it changes, well
# under any test's patience.
WAIT_MS = 20_000

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def missing_browser():
    """Why the browser tests cannot run here, or "" when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -r requirements-dev.txt)"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return ""


@pytest.fixture(scope="session")
def browser():
    if reason := missing_browser():
        # CI installs both (.ci/run): there a missing browser is a failure,
        # never a silently skipped part of the suite.
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests cannot run in CI: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread, which Django's
    # guard takes for async code; the tests' ORM calls never run beside it.
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def site(browser, django_db_setup, django_db_blocker, redis_server, tmp_path_factory):
    """One running site for this module's tests. Never longer: its worker
    would take the tasks of later tests from the suite's shared Redis."""
    with django_db_blocker.unblock():
        live = LiveSite(redis_server.url, tmp_path_factory.mktemp("live-site")).start()
    client = redis_server.client()
    # Publishing counts receivers: the listener must be subscribed first.
    wait_for(lambda: dict(client.pubsub_numsub("task:pubsub:channel")).get(b"task:pubsub:channel", 0) >= 1, message="listen_channel to subscribe")
    client.close()
    yield live
    live.stop()


class Tab:
    """A page in its own browser context that remembers console errors."""

    def __init__(self, browser, site, viewport="desktop", locale="en-US"):
        self.site = site
        self.context = browser.new_context(viewport=VIEWPORTS[viewport], locale=locale, base_url=site.url)
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.errors: list[str] = []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(f"{self.page.url}: {message.text}"))
        self.page.on("pageerror", lambda error: self.errors.append(f"{self.page.url}: {error}"))

    def log_in(self, username):
        self.page.goto("/accounts/login/")
        self.page.fill("#id_username", username)
        self.page.fill("#id_password", PASSWORD)
        # Scoped: every page also has the language switcher's submit button.
        self.page.click("form:has(#id_username) button[type=submit]")
        self.page.wait_for_load_state()
        assert "/accounts/login/" not in self.page.url, "logging in failed"
        return self

    def close(self):
        self.context.close()


@pytest.fixture
def tab(browser, site):
    """A desktop tab; the test fails if any page it opened logged an error."""
    opened = Tab(browser, site)
    yield opened
    opened.close()
    assert opened.errors == []


@pytest.fixture
def staff():
    return User.objects.create_superuser("staff", "staff@example.com", PASSWORD).get_username()


def test_enqueue_then_watch_the_task_succeed_on_its_page_without_a_reload(tab, staff):
    page = tab.log_in(staff).page
    page.goto("/prodcons")
    # The (only) worker busy with another task keeps ours waiting, so its
    # page opens before the outcome and must change by itself.
    blocker = sleep_for.enqueue(6.0).id
    wait_for(lambda: TaskRecord.objects.filter(id=blocker, status=TaskStatus.RUNNING).exists(), message="the blocker to run")
    page.click("form[action='/prodcons'] button[type=submit]")
    item = page.locator("#new-tasks li[data-task-id]")
    assert item.count() == 1
    task_id = item.get_attribute("data-task-id")
    assert item.locator("[data-task-status]").get_attribute("data-task-status") in ("READY", "RUNNING")

    item.locator(f"a[href='/tasks/{task_id}']").click()
    page.wait_for_url(f"**/tasks/{task_id}")
    status = page.locator("#task-status")
    assert status.get_attribute("data-status") in ("READY", "RUNNING")
    page.evaluate("window.notReloaded = true")
    page.wait_for_selector("#task-status[data-status='SUCCESSFUL']")
    assert page.evaluate("window.notReloaded") is True
    assert status.inner_text().strip()
    assert "dish" in page.locator("#task-result").inner_text()
    assert page.locator("#task-attempts").count() == 1


def test_the_new_tasks_list_follows_each_task_to_its_end(tab, staff):
    page = tab.log_in(staff).page
    page.goto("/prodcons")
    page.fill("#id_count", "3")
    page.click("form[action='/prodcons'] button[type=submit]")
    items = page.locator("#new-tasks li[data-task-id]")
    assert items.count() == 3
    page.evaluate("window.notReloaded = true")
    page.wait_for_function("[...document.querySelectorAll('#new-tasks [data-task-status]')].every(s => s.dataset.taskStatus === 'SUCCESSFUL')")
    assert page.evaluate("window.notReloaded") is True
    ids = [items.nth(i).get_attribute("data-task-id") for i in range(3)]
    assert set(TaskRecord.objects.filter(id__in=ids).values_list("status", flat=True)) == {TaskStatus.SUCCESSFUL}


def test_keyboard_alone_reaches_and_presses_enqueue(tab, staff):
    page = tab.log_in(staff).page
    page.goto("/prodcons")
    button = page.locator("form[action='/prodcons'] button[type=submit]")
    for _ in range(40):
        page.keyboard.press("Tab")
        if button.evaluate("b => b === document.activeElement"):
            break
    else:
        pytest.fail("40 presses of Tab never reached the Enqueue button")
    page.keyboard.press("Enter")
    page.wait_for_selector("#new-tasks li[data-task-id]")
    task_id = page.locator("#new-tasks li[data-task-id]").get_attribute("data-task-id")
    wait_for(lambda: TaskRecord.objects.filter(id=task_id, status=TaskStatus.SUCCESSFUL).exists(), message="the task to succeed")


def test_publish_shows_how_many_listeners_received_it(tab, staff):
    page = tab.log_in(staff).page
    page.goto("/pubsub")
    page.fill("#id_message", "hello from the browser")
    page.click("form[action='/pubsub'] button[type=submit]")
    result = page.locator("#publish-result")
    assert result.get_attribute("data-receivers") == "1"
    assert "1" in result.inner_text()


def test_staff_requeue_a_failed_task_from_the_admin_and_it_succeeds(tab, staff, tmp_path):
    # Fails while its folder is missing; after the folder exists, the same task succeeds.
    target = tmp_path / "later" / "out.txt"
    task_id = append_to_file.enqueue(str(target), "ran").id
    wait_for(lambda: TaskRecord.objects.filter(id=task_id, status=TaskStatus.FAILED).exists(), timeout=30, message="the task to fail")
    target.parent.mkdir()

    page = tab.log_in(staff).page
    page.goto("/admin/tasks/taskrecord/?status__exact=FAILED")
    page.check(f"input[name='_selected_action'][value='{task_id}']")
    page.select_option("select[name='action']", "requeue_tasks")
    page.click("button[name='index']")
    page.wait_for_load_state()
    page.goto(f"/tasks/{task_id}")
    page.wait_for_selector("#task-status[data-status='SUCCESSFUL']")
    assert target.read_text().strip() == "ran"


def test_the_language_switcher_translates_the_page(tab):
    page = tab.page
    page.goto("/prodcons")
    assert page.get_attribute("html", "lang").startswith("en")
    english = page.inner_text("h1")
    page.select_option("#language-select", "ko")
    # With JavaScript the form may already submit on change; the button is the no-JS path.
    if page.get_attribute("html", "lang") != "ko":
        page.click("#language-submit")
    page.wait_for_selector("html[lang='ko']")
    assert page.url.endswith("/prodcons")
    korean = page.inner_text("h1")
    assert korean != english and any("\uac00" <= char <= "\ud7a3" for char in korean)


def test_the_favicon_every_page_links_answers(tab):
    page = tab.page
    for path in ("/", "/prodcons", "/pubsub", "/accounts/login/"):
        page.goto(path)
        href = page.locator("link[rel='icon']").get_attribute("href")
        assert page.request.get(href).status == 200, path


def test_the_index_shows_charts_running_tasks_and_dead_letters_with_javascript_off(browser, site):
    task_id = cook_dish.enqueue(3).id
    wait_for(lambda: TaskRecord.objects.filter(id=task_id, status=TaskStatus.SUCCESSFUL).exists(), message="the task to succeed")
    context = browser.new_context(java_script_enabled=False, base_url=site.url)
    page = context.new_page()
    page.goto("/")
    # Drawn by the server: the finished task is already a line on the chart.
    assert page.locator("#charts svg").count() >= 1
    assert page.locator("#charts svg polyline").count() >= 1
    assert page.locator("#running-tasks").count() == 1 and page.locator("#dead-letters").count() == 1
    context.close()


@pytest.mark.parametrize("locale", ["en-US", "ko-KR"])
@pytest.mark.parametrize("viewport", sorted(VIEWPORTS))
def test_screenshots_of_every_main_page(browser, site, staff, viewport, locale, tmp_path):
    """Artifacts for people to look at; each page still has one h1 and no error."""
    task_id = append_to_file.enqueue(str(tmp_path / "missing" / "x"), "never").id
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    tab = Tab(browser, site, viewport=viewport, locale=locale).log_in(staff)
    wait_for(lambda: TaskRecord.objects.filter(id=task_id, status=TaskStatus.FAILED).exists(), timeout=30, message="the task to fail")
    language = locale.split("-")[0]
    for name, path in [("index", "/"), ("prodcons", "/prodcons"), ("pubsub", "/pubsub"), ("task", f"/tasks/{task_id}"), ("admin", "/admin/tasks/taskrecord/")]:
        tab.page.goto(path)
        tab.page.screenshot(path=str(SCREENSHOTS / f"{name}-{viewport}-{language}.png"), full_page=True)
        if name != "admin":
            assert tab.page.locator("h1").count() == 1, path
            assert tab.page.get_attribute("html", "lang").startswith(language), path
    tab.close()
    assert tab.errors == []
