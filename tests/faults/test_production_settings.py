"""Scenario 9: production settings pass Django's deploy checks (mqsite's own
included, the Redis eviction check asking the suite's server), and with
DEBUG off an error page shows no traceback."""

import json
import os
import secrets
import subprocess
import sys

import pytest
from django.test import Client

from tests.processes import BASE_DIR

pytestmark = [pytest.mark.faults]


def production_env(tmp_path, redis_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "MQ_", "DATABASE_URL", "REDIS_URL"))}
    return {
        **env,
        "DJANGO_SETTINGS_MODULE": "mqsite.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
        "DJANGO_ALLOWED_HOSTS": "example.com",
        "MQ_API_TOKENS": "name:" + secrets.token_urlsafe(32),
        "MQ_VAR_DIR": str(tmp_path),
        "REDIS_URL": redis_url,
    }


def test_check_deploy_passes_with_production_settings(tmp_path, redis_url):
    done = subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), "check", "--deploy", "--fail-level", "WARNING"],
        env=production_env(tmp_path, redis_url),
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mqsite.I001" not in done.stdout + done.stderr  # the Redis check really asked


def test_no_process_starts_with_debug_off_and_no_secret_key(tmp_path, redis_url):
    """Each would make up a key of its own: a session signed by one gunicorn
    worker would be refused by the next."""
    env = production_env(tmp_path, redis_url)
    del env["DJANGO_SECRET_KEY"]
    for argv in (["check", "--deploy"], ["listen_queue", "--burst"]):
        done = subprocess.run(
            [sys.executable, str(BASE_DIR / "manage.py"), *argv],
            env=env, cwd=BASE_DIR, capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode != 0, argv
        assert "DJANGO_SECRET_KEY is not set" in done.stderr, done.stderr


@pytest.mark.django_db
@pytest.mark.parametrize("path, status", [("/no-such-page", 404), ("/boom", 500)])
def test_error_pages_show_no_traceback_with_debug_off(settings, path, status):
    settings.DEBUG = False
    settings.ROOT_URLCONF = "tests.faults.boom_urls"
    response = Client(raise_request_exception=False).get(path)
    assert response.status_code == status
    body = response.content.decode()
    for leak in ("Traceback", "secret detail", "RuntimeError", "URLconf", "boom_urls", "settings.py"):
        assert leak not in body


# Runs in a process with the production settings: which tasks can a token
# holder start there? The Client goes through the whole middleware stack.
ASK_THE_API = """
import json, os
from django.test import Client
from tasks import registry
token = os.environ["MQ_API_TOKENS"].split(":", 1)[1]
answers = {}
for path in json.loads(os.environ["PATHS"]):
    response = Client(HTTP_HOST="example.com").post(
        "/api/tasks", json.dumps({"task": path}), content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}", secure=True,
    )
    answers[path] = [response.status_code, response.json()["error"]]
print(json.dumps({"answers": answers, "registered": registry.paths()}))
"""

TEST_ONLY_TASKS = [
    "tasks.tasks.append_to_file",
    "tasks.tasks.crash_worker",
    "tasks.tasks.sleep_for",
    "tests.fixture_tasks.append_to_file",
    "tests.fixture_tasks.crash_worker",
    "tests.fixture_tasks.sleep_for",
    "tests.faults.fault_tasks.slow_append",
]


def test_a_deployment_registers_no_test_task(tmp_path, redis_url):
    """Tasks that write files, kill or stall workers are the suite's alone:
    with the production settings the API refuses them as unknown (400)."""
    done = subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), "shell", "--no-imports", "-c", ASK_THE_API],
        env={**production_env(tmp_path, redis_url), "PATHS": json.dumps([*TEST_ONLY_TASKS, "tasks.tasks.add"])},
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads(done.stdout)
    for path in TEST_ONLY_TASKS:
        assert found["answers"][path] == [400, f"unknown task {path!r}: not a registered task"]
    # The control: a registered task gets as far as checking its arguments.
    assert found["answers"]["tasks.tasks.add"][0] == 400
    assert "arguments do not fit" in found["answers"]["tasks.tasks.add"][1]
    assert not [path for path in found["registered"] if path.startswith("tests.")]
    assert "tasks.tasks.cook_dish" in found["registered"]
