"""A worker stalled past its lease, alive all along: stopped (SIGSTOP, as a
VM pause or a debugger would), or its heartbeat thread starved by a task
holding the GIL in one C call. Another worker takes its batch back and
finishes it. When the stalled worker goes on, it must not run again what it
had not started: only the task it was running, and those it had run but not
yet recorded, may run twice."""

import os
import signal

import pytest
from django.db import connection

from tasks.queue import keys
from tasks.queue.backend import new_task_id, queue_for
from tasks.queue.envelope import Envelope, now_iso
from tasks.models import TaskRecord, TaskStatus
from tests.faults.conftest import QUEUE, all_final, redis_leftovers, runs_counted, serial
from tests.faults.fault_tasks import counted, holds_the_gil_once, stops_its_worker_once
from tests.processes import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

# The stalled worker takes t0 alone (its first batch is one task), then
# t1..t29 at once (a long batch target), runs t1..t4 and stalls in t5.
STALL_AT, COUNT = 5, 30
STALLED_SETTINGS = {"MQ_BATCH_TARGET_SECONDS": 30}


def enqueue_batch(stalling_task, *args):
    ids = {}
    for i in range(COUNT):
        label = f"t{i}"
        ids[label] = (stalling_task.enqueue(label, *args) if i == STALL_AT else counted.enqueue(label)).id
    return ids


def process_state(pid):
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rpartition(")")[2].split()[0]


def assert_nothing_ran_twice_that_had_not_started(redis_client, ids):
    runs = runs_counted(redis_client)
    if not serial():
        # Slots ran tasks beside t5, and their records may not have committed
        # before the stall: any of them may run again, none more than twice
        # (the stalled run and the rescuer's), and history holds each once.
        assert all(1 <= runs[label] <= 2 for label in ids), runs
        rows = TaskRecord.objects.filter(id__in=ids.values())
        assert rows.count() == COUNT and set(rows.values_list("status", flat=True)) == {TaskStatus.SUCCESSFUL}
        wait_for(lambda: not redis_leftovers(redis_client), message="no processing list keeps anything")
        return
    # Recorded before the stall: never again.
    assert runs["t0"] == 1
    # Run but not yet recorded when the stall came, or running: may run again.
    assert all(1 <= runs[f"t{i}"] <= 2 for i in range(1, STALL_AT + 1)), runs
    # Not started by the stalled worker: exactly once, by the rescuer.
    later = [f"t{i}" for i in range(STALL_AT + 1, COUNT)]
    assert {label: runs[label] for label in later} == dict.fromkeys(later, 1)
    rows = {row.id: row for row in TaskRecord.objects.filter(id__in=ids.values())}
    assert len(rows) == COUNT and {row.status for row in rows.values()} == {TaskStatus.SUCCESSFUL}
    # The attempts say so too: the stalled worker's claim of what it never ran is undone.
    assert {label: rows[ids[label]].attempts for label in later} == dict.fromkeys(later, 1)
    wait_for(lambda: not redis_leftovers(redis_client), message="no processing list keeps anything")


@pytest.mark.skipif(
    not serial() and connection.vendor == "sqlite",
    reason="SIGSTOP lands while the main thread records its slots' tasks, and a process frozen inside a SQLite "
    "write holds the database's one write lock for every process (PostgreSQL locks only those rows)",
)
def test_a_worker_stopped_past_its_lease_does_not_rerun_what_another_finished(redis_client, start_worker):
    ids = enqueue_batch(stops_its_worker_once)
    stalled = start_worker("stalled", "--burst", settings=STALLED_SETTINGS)
    wait_for(lambda: process_state(stalled.pid) == "T", timeout=30, message="the worker stopped inside t5")
    rescuer = start_worker("rescuer")
    wait_for(all_final(ids.values()), timeout=30, message="the rescuer finishes the stalled worker's batch")
    os.kill(stalled.pid, signal.SIGCONT)
    assert stalled.process.wait(30) == 0, stalled.log()
    assert "dead_worker=stalled" in rescuer.log()
    assert_nothing_ran_twice_that_had_not_started(redis_client, ids)
    if serial():  # slots may have started some of them beside t5
        later = TaskRecord.objects.filter(id__in=[ids[f"t{i}"] for i in range(STALL_AT + 1, COUNT)])
        assert set(later.values_list("worker", flat=True)) == {"rescuer"}


def test_a_task_holding_the_gil_past_the_lease_does_not_make_its_batch_run_twice(
    redis_client, start_worker, settings
):
    """The heartbeat thread cannot renew the lease while a C call holds the
    GIL: the lease expires and the batch is taken back, as if the worker were
    stopped; when the call returns, the worker must notice."""
    go_key = "tests:hold-the-gil"
    ids = enqueue_batch(holds_the_gil_once, 3 * settings.MQ_LEASE_SECONDS, go_key)
    stalled = start_worker("stalled", "--burst", settings=STALLED_SETTINGS)
    wait_for(lambda: runs_counted(redis_client)["t5"] == 1, timeout=30, message="t5 started")
    rescuer = start_worker("rescuer")
    wait_for(lambda: "event=worker_start" in rescuer.log(), timeout=30, message="the rescuer up")
    redis_client.set(go_key, "1")
    wait_for(all_final(ids.values()), timeout=60, message="the rescuer finishes the stalled worker's batch")
    assert stalled.process.wait(60) == 0, stalled.log()
    # The hold outlasted the lease: the rescuer took the batch back.
    assert "dead_worker=stalled" in rescuer.log()
    assert_nothing_ran_twice_that_had_not_started(redis_client, ids)


def test_only_an_item_still_in_the_processing_list_is_confirmed_and_retried(redis_client):
    """In-process, the two Redis steps a stalled worker relies on: whether an
    item is still its own (then its lease is taken anew), and a failed run's
    retry, scheduled only for an item still its own."""
    envelope = Envelope(id=new_task_id(), task=counted.module_path, queue="default", args=["x"], enqueued_at=now_iso())
    queue = queue_for("default")
    queue.push([envelope])
    [raw], _, _ = queue.take("stalled", 10, 10_000)
    lease = keys.lease(QUEUE, "stalled")
    assert redis_client.delete(lease) == 0  # never registered: as good as lapsed
    assert queue.confirm_held("stalled", raw, 2.0)
    assert 0 < redis_client.pttl(lease) <= 2000

    redis_client.delete(lease)
    assert queue.recover_expired(except_worker="rescuer") == {"stalled": 1}
    assert not queue.confirm_held("stalled", raw, 2.0)
    assert redis_client.exists(lease) == 0
    queue.ack("stalled", [raw], retries=[(raw, envelope.next_attempt(), 0)])
    assert redis_client.zcard(keys.delayed(QUEUE)) == 0, "a retry of an item another worker took back"
    assert redis_client.llen(keys.recovered(QUEUE)) == 1

    [raw], _, _ = queue.take("rescuer", 10, 10_000)
    queue.ack("rescuer", [raw], retries=[(raw, envelope.next_attempt(), 0)])
    assert redis_client.zcard(keys.delayed(QUEUE)) == 1
