"""listen_queue as a real process: kills, stops, poison, and the commands."""

import json
import signal

import pytest

from tasks.queue import keys
from tasks.models import TaskRecord, TaskStatus
from tests.fixture_tasks import append_to_file, crash_worker, sleep_for
from tests.processes import manage, run_manage, stop, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

QUEUE = "task:prodcons:queue"


def statuses(ids):
    return dict(TaskRecord.objects.filter(id__in=ids).values_list("id", "status"))


def all_successful(ids):
    return lambda: set(statuses(ids).values()) == {TaskStatus.SUCCESSFUL} and len(statuses(ids)) == len(ids)


def test_enqueue_command_then_worker_process(redis_url):
    done = run_manage(redis_url, "enqueue", "tasks.tasks.add", "--args", "[2, 3]", "--count", "3")
    assert done.returncode == 0, done.stderr
    ids = done.stdout.split()
    assert len(ids) == 3
    worker = run_manage(redis_url, "listen_queue", "--burst", "--worker-id", "w1")
    assert worker.returncode == 0, worker.stderr
    rows = TaskRecord.objects.filter(id__in=ids)
    assert {(r.status, r.result, r.attempts, r.worker) for r in rows} == {(TaskStatus.SUCCESSFUL, 5, 1, "w1")}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["enqueue", "os.system", "--args", '["true"]'], "Unknown task 'os.system'"),
        (["enqueue", "tasks.tasks.add", "--args", "{not json"], "--args is not valid JSON"),
        (["enqueue", "tasks.tasks.add", "--kwargs", "[]"], "--kwargs must be a JSON object"),
        (["enqueue", "tasks.tasks.add", "--count", "0"], "--count must be at least 1"),
        (["listen_queue", "--max-tasks", "0"], "--max-tasks must be at least 1"),
    ],
)
def test_command_mistakes_are_clear_errors(redis_url, redis_client, argv, message):
    done = run_manage(redis_url, *argv)
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr
    assert TaskRecord.objects.count() == 0 and redis_client.llen(QUEUE) == 0


def test_enqueue_command_refuses_an_oversized_task(redis_url, redis_client):
    argv = ["enqueue", "tasks.tasks.add", "--args", json.dumps(["y" * 200, "z"]), "--count", "2"]
    done = run_manage(redis_url, *argv, settings={"MQ_MAX_MESSAGE_BYTES": 200})
    assert done.returncode != 0
    assert "oversized" in done.stderr and "Traceback" not in done.stderr
    assert TaskRecord.objects.count() == 0 and redis_client.llen(QUEUE) == 0


def test_raw_lpush_from_a_plain_client_is_consumed_and_counted(redis_url, redis_client):
    redis_client.lpush(QUEUE, "5")
    assert run_manage(redis_url, "listen_queue", "--burst").returncode == 0
    row = TaskRecord.objects.get()
    assert (row.task_path, row.status, row.args) == ("tasks.tasks.cook_dish", TaskStatus.SUCCESSFUL, ["5"])
    status = json.loads(run_manage(redis_url, "queue_status", "--json").stdout)
    assert status["history"]["SUCCESSFUL"] == 1
    assert status["queues"]["default"] == {"key": QUEUE, "pending": 0, "in_flight": 0, "delayed": 0, "dead": 0}


def test_sigkill_mid_task_loses_nothing(redis_url, redis_client, tmp_path):
    """Kill a worker inside a task; a second worker finishes everything, each once."""
    log = tmp_path / "runs.txt"
    slow = sleep_for.enqueue(5)
    ids = [slow.id] + [append_to_file.enqueue(str(log), f"line-{i}").id for i in range(20)]
    victim = manage(redis_url, "listen_queue", "--worker-id", "victim")
    wait_for(lambda: TaskRecord.objects.filter(id=slow.id, status=TaskStatus.RUNNING).exists(), message="slow task running")
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    rescuer = manage(redis_url, "listen_queue", "--worker-id", "rescuer")
    try:
        wait_for(all_successful(ids), timeout=30, message="every task SUCCESSFUL after the kill")
    finally:
        assert stop(rescuer) == 0
    assert sorted(log.read_text().split()) == sorted(f"line-{i}" for i in range(20))
    slow_row = TaskRecord.objects.get(id=slow.id)
    assert (slow_row.attempts, slow_row.worker) == (2, "rescuer")
    assert redis_client.llen(keys.processing(QUEUE, "victim")) == 0


def test_restart_with_same_worker_id_takes_back_its_own_leftovers(redis_url):
    slow = sleep_for.enqueue(30)
    victim = manage(redis_url, "listen_queue", "--worker-id", "same", settings={"MQ_LEASE_SECONDS": 60})
    wait_for(lambda: TaskRecord.objects.filter(id=slow.id, status=TaskStatus.RUNNING).exists(), message="task running")
    victim.kill()
    victim.wait(10)
    quick = run_manage(
        redis_url, "listen_queue", "--worker-id", "same", "--max-tasks", "1",
        settings={"MQ_LEASE_SECONDS": 60, "MQ_TASK_TIME_LIMIT": 1, "MQ_MAX_ATTEMPTS": 2},
    )
    assert quick.returncode == 0, quick.stderr
    row = TaskRecord.objects.get(id=slow.id)
    # The restarted worker ran it again at once (the 60 s lease did not hold it back).
    assert row.attempts == 2 and row.status == TaskStatus.FAILED and "time limit" in row.error


def test_sigterm_during_task_finishes_it_and_exits_zero(redis_url, redis_client):
    slow = sleep_for.enqueue(1.5)
    waiting = [sleep_for.enqueue(0).id for _ in range(3)]
    worker = manage(redis_url, "listen_queue", "--worker-id", "polite")
    wait_for(lambda: TaskRecord.objects.filter(id=slow.id, status=TaskStatus.RUNNING).exists(), message="task running")
    assert stop(worker) == 0
    assert TaskRecord.objects.get(id=slow.id).status == TaskStatus.SUCCESSFUL
    # Work it had not started stays queued, not lost and not counted as an attempt.
    pending = TaskRecord.objects.filter(id__in=waiting).exclude(status=TaskStatus.SUCCESSFUL)
    assert all(row.attempts == 0 and row.status == TaskStatus.READY for row in pending)
    assert redis_client.llen(QUEUE) == pending.count()
    assert redis_client.llen(keys.processing(QUEUE, "polite")) == 0
    assert redis_client.zscore(keys.WORKERS, "polite") is None


@pytest.mark.parametrize("concurrency", ["1", "4"])
def test_task_that_kills_its_worker_every_time_ends_dead(redis_url, redis_client, concurrency):
    """With slots, the recovered items ran side by side (the worker took
    again as soon as the first started): the task that kills its worker took
    the others down at every restart, until all of them ended DEAD."""
    poison = crash_worker.enqueue()
    innocent = [append_to_file.enqueue("/dev/null", str(i)).id for i in range(5)]
    innocent += [sleep_for.enqueue(0.5).id for _ in range(3)]  # running when it strikes
    for _ in range(8):  # each run is killed by the task, as systemd would restart it
        run_manage(redis_url, "listen_queue", "--worker-id", "restarted", "--burst", "--concurrency", concurrency)
        if TaskRecord.objects.get(id=poison.id).status == TaskStatus.DEAD:
            break
    row = TaskRecord.objects.get(id=poison.id)
    assert row.status == TaskStatus.DEAD and "gave up after 3 attempts" in row.error
    assert set(statuses(innocent).values()) == {TaskStatus.SUCCESSFUL}
    dead = [json.loads(e) for e in redis_client.lrange(keys.dead(QUEUE), 0, -1)]
    assert [d["id"] for d in dead] == [poison.id]
