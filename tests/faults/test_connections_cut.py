"""Scenario 3: connections cut (CLIENT KILL) and the server frozen for longer
than the socket timeout (SIGSTOP). Nothing hangs, nothing is lost, nothing
runs twice, and processing resumes on its own."""

import time

import pytest

from tasks.models import TaskRecord
from tasks.exceptions import QueueUnavailable
from tests.faults.conftest import all_final, count_status, executions, redis_leftovers
from tests.faults.fault_tasks import slow_append
from tests.fixture_tasks import append_to_file
from tests.processes import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


def assert_each_ran_once(ids_by_line, runs):
    ran = executions(runs)
    rows = dict(TaskRecord.objects.filter(id__in=ids_by_line.values()).values_list("id", "attempts"))
    wrong = {line: (ran[line], rows[i]) for line, i in ids_by_line.items() if (ran[line], rows[i]) != (1, 1)}
    assert wrong == {}, "line: (runs, attempts) of tasks not run exactly once"


def test_client_kill_while_workers_are_busy(redis_client, start_worker, tmp_path):
    runs = tmp_path / "runs.txt"
    ids = {f"t{i}": slow_append.enqueue(str(runs), f"t{i}", 0.02).id for i in range(200)}
    workers = [start_worker("k1"), start_worker("k2")]
    wait_for(lambda: count_status(ids.values()) >= 10, message="workers busy")
    kills = 0
    while count_status(ids.values()) < 150 and kills < 30:
        kills += redis_client.client_kill_filter(_type="normal", skipme=True)
        time.sleep(0.2)
    assert kills >= 4, "the workers' connections were cut while they worked"
    wait_for(all_final(ids.values()), timeout=60, message="all tasks SUCCESSFUL after connection kills")
    assert_each_ran_once(ids, runs)
    assert all(w.alive() for w in workers)
    wait_for(lambda: not redis_leftovers(redis_client), message="nothing left in Redis")


def sigstop(redis_server, redis_client):
    redis_server.pause()
    return redis_server.resume


def client_pause(redis_server, redis_client):
    # Redis holds every client's commands (this one's too, so it cannot
    # unpause early), then runs them: the same ambiguity as SIGSTOP.
    redis_client.execute_command("CLIENT", "PAUSE", 6000, "ALL")
    return lambda: None


@pytest.mark.parametrize("freeze", [sigstop, client_pause])
def test_server_frozen_longer_than_the_socket_timeout(freeze, redis_server, redis_client, start_worker, tmp_path):
    runs = tmp_path / "runs.txt"
    ids = {f"t{i}": slow_append.enqueue(str(runs), f"t{i}", 0.05).id for i in range(60)}
    workers = [start_worker("p1"), start_worker("p2")]
    wait_for(lambda: count_status(ids.values()) >= 5, message="workers busy")
    thaw = freeze(redis_server, redis_client)
    try:
        # A producer meets the frozen server: it must get an answer, not hang.
        asked = time.monotonic()
        try:
            during = append_to_file.enqueue(str(runs), "during")
        except QueueUnavailable:
            during = None
        assert time.monotonic() - asked < 20
        time.sleep(5)  # frozen well past MQ_SOCKET_TIMEOUT (3 s)
    finally:
        thaw()
    wait_for(all_final(ids.values()), timeout=60, message="all tasks SUCCESSFUL after the freeze")
    assert_each_ran_once(ids, runs)
    sentinel = append_to_file.enqueue(str(runs), "sentinel")
    wait_for(all_final([sentinel.id]), message="workers still work")
    if during is None:
        # Told "nothing was queued": then nothing may run, and no row remain.
        assert executions(runs)["during"] == 0
        assert not [row for row in TaskRecord.objects.all() if "during" in row.args]
    else:
        # Accepted although Redis did not answer: it runs, exactly once.
        wait_for(all_final([during.id]), message="the task enqueued during the freeze runs")
        assert executions(runs)["during"] == 1
    assert all(w.alive() for w in workers)
    assert all("event=redis_back" in w.log() for w in workers)
    wait_for(lambda: not redis_leftovers(redis_client), message="nothing left in Redis")
