"""Scenario 9: production settings pass Django's deploy checks (mqsite's own
included, the Redis eviction check asking the suite's server), and with
DEBUG off an error page shows no traceback."""

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
    assert "mqsite.I_REDIS_UNREACHABLE" not in done.stdout + done.stderr  # the Redis check really asked


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
