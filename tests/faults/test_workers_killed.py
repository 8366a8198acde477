"""Scenario 6: a worker SIGKILLed at every step of a task's life (the fault
points in tasks/faults.py); a second worker finishes the work. Every task
ends final exactly once in history, the attempts say what really happened,
and no processing list keeps anything."""

import signal

import pytest

from tasks.models import TaskRecord, TaskStatus
from tests.faults.conftest import all_final, executions, redis_leftovers
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
