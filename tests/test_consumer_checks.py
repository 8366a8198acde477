"""The system checks a consumer runs as it starts (CONSUMER_CHECKS in
tasks/management/process.py): a bad mqsite setting stops it, as before; the
web site's checks (URLconf, admin, templates, static files) are left to the
web process and `manage.py check`, so a worker does not import the site."""

import pytest

from tests.processes import run_manage

pytestmark = pytest.mark.django_db(transaction=True)

# A URLconf that cannot be imported: the web site's check (urls.E...) fails on it.
BROKEN_SITE = {"ROOT_URLCONF": "tests.no_such_urlconf"}


@pytest.mark.parametrize("argv", [["listen_queue", "--burst"], ["listen_channel", "--max-messages", "1"]])
def test_a_bad_mqsite_setting_stops_a_consumer_before_it_starts(redis_url, argv):
    done = run_manage(redis_url, *argv, settings={"MQ_MAX_BATCH": 0}, timeout=60)
    assert done.returncode != 0
    assert "mqsite.E016" in done.stderr


def test_a_worker_runs_without_the_web_sites_checks(redis_url):
    assert run_manage(redis_url, "check", settings=BROKEN_SITE).returncode != 0  # the check a worker skips
    done = run_manage(redis_url, "listen_queue", "--burst", settings=BROKEN_SITE)
    assert done.returncode == 0, done.stderr
