"""Scenario 2: Redis unreachable. A producer outside a transaction is told
(QueueUnavailable) and nothing is left behind; inside a transaction the row
is the outbox and is delivered once Redis is back. Workers wait quietly."""

import time

import pytest
from django.db import transaction

from tasks.models import TaskRecord
from tasks.exceptions import QueueUnavailable
from tasks.tasks import add
from tests.faults.conftest import all_final, executions
from tests.fixture_tasks import append_to_file
from tests.processes import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


def test_enqueue_outside_a_transaction_raises_and_leaves_no_row(redis_server):
    redis_server.stop()
    with pytest.raises(QueueUnavailable):
        add.enqueue(1, 2)
    with pytest.raises(QueueUnavailable):
        add.get_backend().enqueue_many(add, [((1, 2), {})] * 5)
    assert TaskRecord.objects.count() == 0


def test_workers_wait_quietly_and_the_committed_outbox_is_delivered(redis_server, redis_client, start_worker, tmp_path):
    runs = tmp_path / "runs.txt"
    before = [append_to_file.enqueue(str(runs), f"before-{i}").id for i in range(5)]
    running = start_worker("was-running")  # meets the outage in its main loop
    wait_for(all_final(before), message="the running worker works")
    redis_server.stop()
    early = start_worker("started-early")  # starts into the outage
    with transaction.atomic():
        committed = [append_to_file.enqueue(str(runs), f"committed-{i}").id for i in range(3)]
    assert TaskRecord.objects.filter(id__in=committed).count() == 3

    workers = [running, early]
    wait_for(lambda: all("event=redis_down" in w.log() for w in workers), message="both workers saw the outage")
    lines_before = [len(w.log().splitlines()) for w in workers]
    cpu_before = [w.cpu_seconds() for w in workers]
    time.sleep(4)  # the window over which CPU and log lines are measured
    cpu_used = [w.cpu_seconds() - cpu for w, cpu in zip(workers, cpu_before)]
    new_lines = [len(w.log().splitlines()) - n for w, n in zip(workers, lines_before)]
    # A busy retry loop would burn most of the 4 s; backing off costs a few ms.
    assert all(cpu < 0.4 for cpu in cpu_used), f"CPU seconds used while Redis was down: {cpu_used}"
    assert new_lines == [0, 0], f"log lines while Redis stayed down: {new_lines}"
    assert all(w.log().count("event=redis_down") == 1 for w in workers)
    assert all(w.alive() for w in workers)

    redis_server.start()
    wait_for(all_final(committed), timeout=30, message="the committed tasks delivered once Redis is back")
    later = append_to_file.enqueue(str(runs), "after")
    wait_for(all_final([later.id]), message="both workers work again")
    ran = executions(runs)
    assert [ran[f"committed-{i}"] for i in range(3)] == [1, 1, 1]
    assert ran["after"] == 1
    assert all("event=worker_start" in w.log() for w in workers)
