"""Scenario 5: database trouble. A worker's PostgreSQL connection is killed
while idle, while claiming and while recording: the task is recorded after
the worker reconnects, once. Many writers on SQLite never see "database is
locked"."""

import threading

import pytest
from django.db import connection, connections, transaction

from tasks.models import TaskRecord, TaskStatus
from tests.faults.conftest import all_final, executions
from tests.faults.fault_tasks import slow_append
from tests.fixture_tasks import append_to_file
from tests.processes import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

postgresql_only = pytest.mark.skipif(connection.vendor != "postgresql", reason="pg_terminate_backend is PostgreSQL's")


def terminate(where="true"):
    """Kill the database sessions of other processes (the workers'); how many."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = current_database() AND pid <> pg_backend_pid() AND {where}"
        )
        return len(cursor.fetchall())


def waiting_on_a_lock():
    with connection.cursor() as cursor:
        # Inside a transaction pg_stat_activity is a snapshot unless cleared.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


@postgresql_only
def test_connection_terminated_while_idle(start_worker, tmp_path):
    runs = tmp_path / "runs.txt"
    worker = start_worker("db-idle")
    wait_for(lambda: "event=worker_start" in worker.log(), message="worker started")
    assert terminate() >= 1
    wait_for(lambda: "event=db_back" in worker.log(), message="the worker reconnected")
    result = append_to_file.enqueue(str(runs), "after")
    wait_for(all_final([result.id]), message="task recorded after reconnecting")
    assert TaskRecord.objects.get(id=result.id).attempts == 1 and executions(runs)["after"] == 1
    assert worker.alive() and "event=db_down" in worker.log()


@postgresql_only
@pytest.mark.parametrize("step", ["claim", "record"])
def test_connection_terminated_mid_statement(step, start_worker, tmp_path):
    """The test holds the task's row lock so the worker's UPDATE (its claim, or
    the record of the outcome) waits on it, then kills that session."""
    runs = tmp_path / "runs.txt"
    result = slow_append.enqueue(str(runs), "once", 0 if step == "claim" else 2)
    worker = None
    if step == "record":
        worker = start_worker("db-busy")
        wait_for(lambda: TaskRecord.objects.filter(id=result.id, status=TaskStatus.RUNNING).exists(), message="task running")
    with transaction.atomic():
        TaskRecord.objects.select_for_update().get(id=result.id)
        if worker is None:
            worker = start_worker("db-busy")
        wait_for(waiting_on_a_lock, timeout=30, message=f"the worker's {step} waiting on the row lock")
        assert terminate("wait_event_type = 'Lock'") == 1
    wait_for(all_final([result.id]), timeout=30, message="task recorded after reconnecting")
    row = TaskRecord.objects.get(id=result.id)
    assert (row.attempts, row.result, executions(runs)["once"]) == (1, "once", 1)
    assert worker.alive() and "event=db_down" in worker.log() and "event=db_back" in worker.log()


def test_many_writers_never_see_database_is_locked(start_worker, tmp_path):
    """4 workers record while 20 threads enqueue 200 tasks through the Tasks API."""
    runs = tmp_path / "runs.txt"
    workers = [start_worker(f"c{i}") for i in range(4)]
    wait_for(lambda: all("event=worker_start" in w.log() for w in workers), message="workers started")
    ids, errors = {}, []

    def produce(thread):
        try:
            for i in range(10):
                line = f"t{thread}-{i}"
                ids[line] = append_to_file.enqueue(str(runs), line).id
        except Exception as exc:  # noqa: BLE001 - reported below, with the others
            errors.append(repr(exc))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and len(ids) == 200
    wait_for(all_final(ids.values()), timeout=60, message="all 200 tasks SUCCESSFUL")
    assert TaskRecord.objects.count() == 200
    assert set(executions(runs).values()) == {1} and len(executions(runs)) == 200
    logs = "".join(w.log() for w in workers)
    assert "database is locked" not in logs and "event=db_down" not in logs
    assert all(w.alive() for w in workers)
