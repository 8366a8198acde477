"""Scenario 6: a worker SIGKILLed at every step of a task's life (the fault
points in tasks/faults.py); a second worker finishes the work. Every task
ends final exactly once in history, the attempts say what really happened,
and no processing list keeps anything."""

import json
import signal
import time

import pytest
from django.db import connection

from tasks.models import TaskRecord, TaskStatus
from tasks.queue import keys
from tests.faults.conftest import QUEUE, all_final, executions, kill, redis_leftovers, serial_only
from tests.faults.fault_tasks import flaky_append
from tests.fixture_tasks import append_to_file
from tests.processes import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


def enqueue_lines(runs, count):
    return {f"t{i}": append_to_file.enqueue(str(runs), f"t{i}").id for i in range(count)}


def killed_then_rescued(start_worker, fault, settings=None):
    victim = start_worker("victim", fault=fault, settings=settings)
    assert victim.process.wait(60) == -signal.SIGKILL
    return victim, start_worker("rescuer")


# (runs, attempts) of the task the fault strikes, the third one taken:
#   after_take: killed before the claim, so that run never started or counted;
#   after_run: it ran, unrecorded, so it runs again: two runs, two attempts;
#   after_record: recorded SUCCESSFUL before the kill, so it is never rerun.
@serial_only
@pytest.mark.parametrize("fault, struck", [("after_take:3", (1, 1)), ("after_run:3", (2, 2)), ("after_record:3", (1, 1))])
def test_killed_at_each_step_one_task_at_a_time(fault, struck, redis_client, start_worker, tmp_path):
    runs = tmp_path / "runs.txt"
    ids = enqueue_lines(runs, 10)
    # Batches of one, so the third take, run and record are all task t2's.
    _, rescuer = killed_then_rescued(start_worker, fault, settings={"MQ_MAX_BATCH": 1})
    wait_for(all_final(ids.values()), timeout=30, message="the rescuer finishes everything")
    ran = executions(runs)
    attempts = dict(TaskRecord.objects.filter(id__in=ids.values()).values_list("id", "attempts"))
    found = {line: (ran[line], attempts[task_id]) for line, task_id in ids.items()}
    assert found == {**dict.fromkeys(ids, (1, 1)), "t2": struck}
    assert TaskRecord.objects.get(id=ids["t2"]).worker == ("rescuer" if fault != "after_record:3" else "victim")
    assert TaskRecord.objects.count() == 10
    wait_for(lambda: not redis_leftovers(redis_client), message="no processing list keeps anything")
    assert "event=recovered" in rescuer.log() and "dead_worker=victim" in rescuer.log()


def test_a_failed_task_keeps_its_dead_letter_when_its_worker_dies_before_the_ack(redis_client, start_worker, tmp_path):
    """The entry travels with the acknowledgement: killed between recording
    FAILED and acknowledging, the victim left a row FAILED and no entry, and
    the rescuer acknowledged the finished copy without one."""
    runs = tmp_path / "runs.txt"
    task_id = flaky_append.enqueue(str(runs), "f").id  # fails its first attempt, the last one here
    killed_then_rescued(start_worker, "after_record:1", settings={"MQ_MAX_ATTEMPTS": 1})
    assert TaskRecord.objects.get(id=task_id).status == TaskStatus.FAILED
    wait_for(lambda: not redis_leftovers(redis_client), timeout=30, message="the rescuer acknowledged the victim's item")
    assert executions(runs)["f"] == 1  # recorded before the kill: not run again
    dead = [json.loads(entry) for entry in redis_client.lrange(keys.dead(QUEUE), 0, -1)]
    assert [(entry["id"], entry["reason"]) for entry in dead] == [(task_id, "builtins.RuntimeError")]


@serial_only
def test_killed_after_a_run_inside_a_batch(redis_client, start_worker, tmp_path):
    """Batches are claimed together and recorded together: a kill after the
    5th run loses the records of every run of its batch (they run again), and
    its tasks not yet started were already charged an attempt."""
    runs = tmp_path / "runs.txt"
    ids = enqueue_lines(runs, 40)
    # A long batch target: the victim takes t0 alone (its first batch is one
    # task), then t1..t39 at once, and dies after running t4.
    killed_then_rescued(start_worker, "after_run:5", settings={"MQ_BATCH_TARGET_SECONDS": 30})
    wait_for(all_final(ids.values()), timeout=30, message="the rescuer finishes everything")
    ran = executions(runs)
    attempts = dict(TaskRecord.objects.filter(id__in=ids.values()).values_list("id", "attempts"))
    found = {line: (ran[line], attempts[task_id]) for line, task_id in ids.items()}
    expected = {"t0": (1, 1)}  # recorded before the kill
    expected.update({f"t{i}": (2, 2) for i in range(1, 5)})  # ran, unrecorded, ran again
    expected.update({f"t{i}": (1, 2) for i in range(5, 40)})  # claimed, never started, then run once
    assert found == expected
    assert TaskRecord.objects.filter(id__in=ids.values(), status=TaskStatus.SUCCESSFUL).count() == 40
    wait_for(lambda: not redis_leftovers(redis_client), message="no processing list keeps anything")


recorded_behind = pytest.mark.skipif(connection.vendor != "postgresql", reason="batches are recorded behind on PostgreSQL only")


def frozen_behind(start_worker, runs):
    """40 tasks and a victim whose record thread froze after writing its
    second batch (t1..t10), before taking it off the processing list; its
    main thread ran t11..t20 meanwhile, then waits for the frozen record.
    Returns (victim, {line: task id})."""
    ids = enqueue_lines(runs, 40)
    # Batches of ten once the first (t0, alone) has shown the tasks are fast:
    # the target is long enough that a slow first run (a loaded machine) does
    # not make the second batch shorter.
    victim = start_worker("victim", fault="after_record/freeze:2", settings={"MQ_MAX_BATCH": 10, "MQ_BATCH_TARGET_SECONDS": 10.0})
    # The next batch ran while the one before it was being recorded: with
    # the record in the main thread, this never happens.
    wait_for(lambda: set(executions(runs)) >= {f"t{i}" for i in range(21)}, timeout=30, message="t11..t20 run behind the frozen record")
    time.sleep(0.5)  # nothing further starts: the next hand-over waits for the frozen record
    assert set(executions(runs)) == {f"t{i}" for i in range(21)}
    recorded = TaskRecord.objects.filter(id__in=[ids[f"t{i}"] for i in range(11)], status=TaskStatus.SUCCESSFUL)
    assert recorded.count() == 11
    return victim, ids


def rescued_after_frozen_behind(redis_client, start_worker, runs, ids):
    """A rescuer finishes: the recorded batch never runs again, the runs
    that were not recorded run again, nothing is lost."""
    start_worker("rescuer")
    wait_for(all_final(ids.values()), timeout=30, message="the rescuer finishes everything")
    ran = executions(runs)
    attempts = dict(TaskRecord.objects.filter(id__in=ids.values()).values_list("id", "attempts"))
    found = {line: (ran[line], attempts[task_id]) for line, task_id in ids.items()}
    expected = {f"t{i}": (1, 1) for i in range(11)}  # recorded before the end: acknowledged unrun
    expected.update({f"t{i}": (2, 2) for i in range(11, 21)})  # ran behind the record, unrecorded, ran again
    expected.update({f"t{i}": (1, 1) for i in range(21, 40)})  # never taken by the victim
    assert found == expected
    wait_for(lambda: not redis_leftovers(redis_client), message="no processing list keeps anything")


@recorded_behind
@serial_only
def test_killed_while_a_batch_is_recorded_behind(redis_client, start_worker, tmp_path):
    """On PostgreSQL the worker records a batch on a thread of its own while
    it runs the next (tasks.worker.record_behind). Killed while that record
    is stuck, it loses nothing."""
    runs = tmp_path / "runs.txt"
    victim, ids = frozen_behind(start_worker, runs)
    kill(victim)
    rescued_after_frozen_behind(redis_client, start_worker, runs, ids)


@recorded_behind
@serial_only
def test_a_second_signal_ends_a_worker_waiting_for_its_record(redis_client, start_worker, tmp_path):
    """The first SIGTERM waits for the record behind, as a warm shutdown
    waits for the running task; a record that never ends (here frozen, in
    real life a database outage) yields to the second, which exits at once."""
    runs = tmp_path / "runs.txt"
    victim, ids = frozen_behind(start_worker, runs)
    victim.process.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert victim.alive(), "the first signal waits for the record"
    victim.process.send_signal(signal.SIGTERM)
    assert victim.process.wait(10) == 128 + signal.SIGTERM
    # Not given back: the record in flight might still have committed after
    # another worker claimed them. They come back when the lease expires.
    assert redis_client.llen(keys.processing(QUEUE, "victim")) == 20
    rescued_after_frozen_behind(redis_client, start_worker, runs, ids)
