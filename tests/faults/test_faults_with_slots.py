"""A cheap subset of the fault suite again, with workers that run four tasks
at once (--concurrency through MQ_WORKER_CONCURRENCY). The whole suite runs
so with MQ_FAULT_CONCURRENCY=4 (see conftest.py): there, the tests that pin
a serial worker's steps are skipped (conftest.serial_only), and the others
check what the guarantees say of slots.

    MQ_FAULT_CONCURRENCY=4 .venv/bin/python -m pytest -m faults
"""

import pytest

from tests.faults import conftest
from tests.faults.test_connections_cut import test_client_kill_while_workers_are_busy as client_kill
from tests.faults.test_hostile_input import test_hostile_items_never_run_code_and_never_stop_the_worker as hostile
from tests.faults.test_poison_and_retries import test_hanging_tasks_are_stopped_retried_then_failed as hanging

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def four_slots(monkeypatch):
    monkeypatch.setitem(conftest.FAULT_SETTINGS, "MQ_WORKER_CONCURRENCY", 4)


def test_hanging_tasks_in_threads(start_worker, tmp_path):
    hanging(start_worker, tmp_path)


def test_hostile_items_with_slots(redis_client, start_worker, tmp_path):
    hostile(redis_client, start_worker, tmp_path)


def test_client_kill_with_slots(redis_client, start_worker, tmp_path):
    client_kill(redis_client, start_worker, tmp_path)
