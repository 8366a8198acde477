"""Recording behind (tasks/worker/record_behind.py) under stops and outages.

A second signal must end a worker whose shutdown waits for a stuck record
of the batch behind (RecordBehind.close() used to join the stuck thread:
both second-signal tests hung there). A Redis refusal and a killed database
session while a batch is recorded behind lose nothing and run nothing twice.
"""

import signal
import subprocess
import threading
import time

import pytest
from django.db import connection, connections, transaction

from tasks.models import TaskRecord, TaskStatus
from tests.faults.conftest import all_final, executions, redis_leftovers, serial_only
from tests.faults.fault_tasks import slow_append
from tests.faults.test_database_trouble import terminate, waiting_on_a_lock
from tests.fixture_tasks import append_to_file, nap_and_note
from tests.processes import wait_for
from tests.redis_server import free_port

pytestmark = [
    pytest.mark.faults,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="batches are recorded behind on PostgreSQL only"),
    serial_only,
]


def test_second_signal_while_shutdown_waits_for_the_record_behind_exits_at_once(redis_client, start_worker, tmp_path):
    """--max-tasks 11: t0 alone, then t1..t10 in one batch handed to the record
    thread, whose record freezes (a database that stopped answering).
    The loop is done (max reached) and _shutdown waits for the record. The
    operator's first SIGTERM only sets a flag; the second must exit at once
    (README: "a second one exits at once")."""
    runs = tmp_path / "runs.txt"
    ids = {f"t{i}": append_to_file.enqueue(str(runs), f"t{i}").id for i in range(40)}
    victim = start_worker(
        "victim", "--max-tasks", "11", fault="after_record/freeze:2", settings={"MQ_MAX_BATCH": 10, "MQ_BATCH_TARGET_SECONDS": 10.0}
    )
    wait_for(lambda: set(executions(runs)) >= {f"t{i}" for i in range(11)}, timeout=30, message="t0..t10 ran")
    time.sleep(1.0)
    assert victim.alive(), "waits for the frozen record"
    victim.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    second_signal_ends_it(victim)
    rescued_once_each(start_worker, runs, ids)


def second_signal_ends_it(victim):
    """The operator's second SIGTERM, while the first waits for the frozen
    record: the worker exits 143 at once."""
    victim.process.send_signal(signal.SIGTERM)
    try:
        code = victim.process.wait(10)
    except subprocess.TimeoutExpired:
        code = None
    assert code == 128 + signal.SIGTERM, "the second signal did not end the worker"


def rescued_once_each(start_worker, runs, ids):
    """A rescuer takes back what the victim held (after its lease: a forced
    stop gives nothing back while a record may still commit) and finishes
    everything; every task ran exactly once, the frozen batch included
    (recorded before the freeze, it comes back acknowledged unrun)."""
    start_worker("rescuer")
    wait_for(all_final(ids.values()), timeout=60, message="the rescuer finishes everything")
    ran = executions(runs)
    assert {line: ran[line] for line in ids} == {line: 1 for line in ids}


def test_second_signal_after_a_warm_stop_mid_batch_exits_at_once(redis_client, start_worker, tmp_path):
    """The common case: SIGTERM while a batch runs; the batch's rest is left
    unrun and the batch is handed to the record thread, whose record is
    stuck (frozen here; a database outage in real life). The loop ends and
    _shutdown waits in RecordBehind.close(). A second SIGTERM must exit."""
    runs = tmp_path / "runs.txt"
    ids = {f"t{i}": nap_and_note.enqueue(str(runs), f"t{i}", 0.2).id for i in range(30)}
    victim = start_worker(
        "victim", fault="after_record/freeze:2", settings={"MQ_MAX_BATCH": 10, "MQ_BATCH_TARGET_SECONDS": 10.0}
    )
    wait_for(lambda: len(executions(runs)) >= 3, timeout=30, message="t0 and part of the second batch ran")
    victim.process.send_signal(signal.SIGTERM)  # warm stop: the second batch's rest stays unrun
    time.sleep(1.5)
    assert victim.alive(), "the first signal waits for the record"
    second_signal_ends_it(victim)
    rescued_once_each(start_worker, runs, ids)


# --- outages while a batch is recorded behind ----------------------------------
DEEP = {"MQ_MAX_BATCH": 10, "MQ_BATCH_TARGET_SECONDS": 10.0}


def hold_row_lock(task_id, until):
    """In a thread of its own: lock ``task_id``'s row until ``until`` is set,
    so that the record of its batch (in the worker's record thread) waits."""
    locked = threading.Event()

    def run():
        try:
            with transaction.atomic():
                TaskRecord.objects.select_for_update().get(id=task_id)
                locked.set()
                until.wait(60)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    assert locked.wait(10)
    return thread


def batch_behind_blocked(start_worker, runs):
    ids = {f"t{i}": slow_append.enqueue(str(runs), f"t{i}", 0.15).id for i in range(30)}
    worker = start_worker("w", settings=DEEP)
    # t1..t10 is the second batch: lock t5 once it is claimed, before the batch ends.
    wait_for(lambda: TaskRecord.objects.filter(id=ids["t5"], status=TaskStatus.RUNNING).exists(), timeout=30, message="t5 claimed")
    release = threading.Event()
    holder = hold_row_lock(ids["t5"], release)
    # The worker goes on with t11..t20 while t1..t10's record waits on the lock.
    wait_for(lambda: executions(runs)["t12"] == 1, timeout=30, message="the next batch runs")
    wait_for(waiting_on_a_lock, timeout=30, message="the record thread waits on t5's row lock")
    return worker, ids, release, holder


def test_redis_read_only_while_a_batch_is_recorded_behind(redis_client, start_worker, tmp_path):
    runs = tmp_path / "runs.txt"
    worker, ids, release, holder = batch_behind_blocked(start_worker, runs)
    redis_client.replicaof("127.0.0.1", free_port())  # writes refused: the acknowledgement fails
    try:
        release.set()
        holder.join()
        wait_for(lambda: "READONLY" in worker.log() or "read only" in worker.log().lower(), timeout=30, message="the worker met the refusal")
        time.sleep(2.0)
    finally:
        redis_client.replicaof("NO", "ONE")
    wait_for(all_final(ids.values()), timeout=60, message="everything finishes")
    ran = executions(runs)
    assert {line: ran[line] for line in ids} == {line: 1 for line in ids}
    assert set(TaskRecord.objects.filter(id__in=ids.values()).values_list("attempts", flat=True)) == {1}
    wait_for(lambda: not redis_leftovers(redis_client), timeout=30, message="no processing list keeps anything")
    assert worker.alive()


def test_record_threads_session_killed_while_a_batch_is_recorded_behind(redis_client, start_worker, tmp_path):
    runs = tmp_path / "runs.txt"
    worker, ids, release, holder = batch_behind_blocked(start_worker, runs)
    assert terminate("wait_event_type = 'Lock'") == 1  # the record thread's session
    release.set()
    holder.join()
    wait_for(all_final(ids.values()), timeout=60, message="everything finishes")
    ran = executions(runs)
    assert {line: ran[line] for line in ids} == {line: 1 for line in ids}
    assert set(TaskRecord.objects.filter(id__in=ids.values()).values_list("attempts", flat=True)) == {1}
    wait_for(lambda: not redis_leftovers(redis_client), timeout=30, message="no processing list keeps anything")
    assert worker.alive() and "event=db_back" in worker.log()
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(20) == 0
