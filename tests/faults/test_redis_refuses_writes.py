"""Scenario 4: Redis answers but refuses writes: out of memory under
noeviction, or read-only after REPLICAOF. Producers are told; workers keep
what they hold and carry on once writes are accepted again. An eviction
policy that could drop queue keys is reported."""

import json

import pytest
from django.core.management import call_command
from django.db import transaction

from tasks.queue import keys
from tasks.models import TaskRecord, TaskStatus
from tasks.exceptions import QueueUnavailable
from tasks.queue.reliable import ReliableQueue
from tasks.tasks import add
from tasks.worker.loop import Worker
from tests.faults.conftest import QUEUE, all_final, executions, redis_leftovers, serial
from tests.faults.fault_tasks import slow_append
from tests.fixture_tasks import append_to_file
from tests.processes import run_manage, wait_for
from tests.redis_server import free_port

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


def out_of_memory(client):
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)  # below what the server already uses
    return "maxmemory", lambda: client.config_set("maxmemory", 0)


def read_only(client):
    client.replicaof("127.0.0.1", free_port())  # a master that is not there: the data stays
    return "read only replica", lambda: client.replicaof("NO", "ONE")


def ids_in(client, key):
    return {json.loads(item)["id"] for item in client.lrange(key, 0, -1)}


@pytest.mark.parametrize("refuse", [out_of_memory, read_only])
def test_refused_writes_pause_everything_and_lose_nothing(refuse, redis_client, start_worker, tmp_path):
    runs = tmp_path / "runs.txt"
    held = slow_append.enqueue(str(runs), "held", 2)
    queued = {f"q{i}": append_to_file.enqueue(str(runs), f"q{i}").id for i in range(5)}
    worker = start_worker("w")
    wait_for(lambda: TaskRecord.objects.filter(id=held.id, status=TaskStatus.RUNNING).exists(), message="task running")

    error, allow_writes = refuse(redis_client)
    try:
        with pytest.raises(QueueUnavailable, match=error):
            add.enqueue(1, 2)
        assert not TaskRecord.objects.filter(task_path=add.module_path).exists()
        with transaction.atomic():
            outbox = append_to_file.enqueue(str(runs), "outbox")
        # The task under way finishes and is recorded; its item stays in the
        # worker's processing list (the acknowledgement is refused), not lost.
        wait_for(all_final([held.id]), message="the running task recorded")
        processing = keys.processing(QUEUE, "w")
        wait_for(lambda: error in worker.log(), message="the worker met the refusal")
        kept = ids_in(redis_client, processing)
        assert held.id in kept
        if serial():
            assert redis_client.llen(QUEUE) == 5  # taken one at a time: nothing more while refused
        else:  # slots took the five with it: each is done, or still in one list or the other
            done = set(TaskRecord.objects.filter(id__in=queued.values(), status=TaskStatus.SUCCESSFUL).values_list("id", flat=True))
            assert set(queued.values()) <= kept | ids_in(redis_client, QUEUE) | done
        assert worker.alive()
    finally:
        allow_writes()

    everything = [held.id, outbox.id, *queued.values()]
    wait_for(all_final(everything), timeout=30, message="every task done once writes are accepted")
    ran = executions(runs)
    assert {line: ran[line] for line in ["held", "outbox", *queued]} == dict.fromkeys(["held", "outbox", *queued], 1)
    assert set(TaskRecord.objects.filter(id__in=everything).values_list("attempts", flat=True)) == {1}
    assert worker.alive() and "event=redis_back" in worker.log()
    wait_for(lambda: not redis_leftovers(redis_client), message="nothing left in Redis")


@pytest.mark.parametrize("policy, warned", [("allkeys-lru", True), ("noeviction", False)])
def test_an_eviction_policy_that_can_drop_queue_keys_is_reported(redis_url, redis_client, policy, warned):
    redis_client.config_set("maxmemory-policy", policy)
    status = run_manage(redis_url, "queue_status", "--json")
    assert status.returncode == 0, status.stderr
    assert bool(json.loads(status.stdout)["warnings"]) is warned
    text = run_manage(redis_url, "queue_status")
    assert ("warning:" in text.stderr and policy in text.stderr) is warned
    check = run_manage(redis_url, "check", "--deploy", "--tag", "mqsite_redis", "--fail-level", "WARNING")
    assert ("mqsite.W002" in check.stderr + check.stdout) is warned
    assert (check.returncode != 0) is warned


def test_the_redis_check_only_notes_an_unreachable_server(settings):
    settings.MQ_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    call_command("check", "--deploy", "--tag", "mqsite_redis", "--fail-level", "WARNING")


def test_a_refused_sweeper_push_pauses_the_worker_instead_of_ending_it(monkeypatch, settings, redis_client):
    """In-process: the sweeper's push is refused once (as under OOM or a
    read-only server); the worker must carry on and deliver on a later sweep."""
    settings.MQ_SWEEP_GRACE_SECONDS = 0
    settings.MQ_SWEEP_INTERVAL_SECONDS = 0.1
    settings.MQ_LEASE_SECONDS = 1
    lost = add.enqueue(2, 3)
    redis_client.flushall()  # Redis lost it; only the row remains
    original, calls = ReliableQueue.push, []

    def refuse_once(self, envelopes, max_length=None):
        calls.append([e.id for e in envelopes])
        if len(calls) == 1:
            raise QueueUnavailable("refused on purpose")
        return original(self, envelopes, max_length)

    monkeypatch.setattr(ReliableQueue, "push", refuse_once)
    assert Worker(worker_id="sweeping", max_tasks=1).run() == 1
    assert calls[:2] == [[lost.id], [lost.id]]
    row = TaskRecord.objects.get(id=lost.id)
    assert (row.status, row.result, row.attempts) == (TaskStatus.SUCCESSFUL, 5, 1)
