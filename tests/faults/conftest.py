"""Shared pieces of the fault suite: worker processes that are always cleaned
up, a Redis server put back in order after each test, and ways to count what
really ran and what Redis still holds."""

import collections
import os
import signal

import pytest

from tasks.queue import keys
from tasks.models import TaskRecord, TaskStatus
from tests.processes import manage, stop

QUEUE = "task:prodcons:queue"

# Every worker process of the fault suite sweeps with short periods, so that
# recovery happens within a test's patience.
FAULT_SETTINGS = {
    "MQ_SWEEP_GRACE_SECONDS": 2.0,
    "MQ_SWEEP_INTERVAL_SECONDS": 0.5,
}
# MQ_FAULT_CONCURRENCY=8 runs the whole fault suite with workers that run
# several tasks at once (thread slots): every guarantee must hold there too.
if os.environ.get("MQ_FAULT_CONCURRENCY"):
    FAULT_SETTINGS["MQ_WORKER_CONCURRENCY"] = int(os.environ["MQ_FAULT_CONCURRENCY"])


def serial():
    """Whether the workers these tests start run one task at a time."""
    return FAULT_SETTINGS.get("MQ_WORKER_CONCURRENCY", 1) == 1


# For tests that pin a serial worker's steps: which task a fault point
# strikes, what a batch leaves unstarted, a record behind. With slots the
# same guarantees are pinned by tests/test_concurrency.py (SIGKILL mid-run,
# warm shutdown) and tests/faults/test_slots_misbehaving_tasks.py.
serial_only = pytest.mark.skipif(not serial(), reason="pins the serial worker's steps")


class WorkerProcess:
    def __init__(self, process, log_path, worker_id):
        self.process = process
        self.log_path = log_path
        self.worker_id = worker_id

    @property
    def pid(self):
        return self.process.pid

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self):
        return self.process.poll() is None

    def cpu_seconds(self):
        """User + system CPU time the process has used so far (from /proc)."""
        with open(f"/proc/{self.pid}/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()
        # Fields 14 and 15 of stat(5) (utime, stime); [2] is field 3 once pid and comm are cut.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self):
        with open(f"/proc/{self.pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")


@pytest.fixture
def start_worker(redis_url, tmp_path):
    """start_worker(worker_id, *args, fault="", settings=None) -> WorkerProcess."""
    started = []

    def start(worker_id, *args, fault="", settings=None):
        log_path = tmp_path / f"worker-{worker_id}-{len(started)}.log"
        process = manage(
            redis_url,
            "listen_queue",
            "--worker-id",
            worker_id,
            *args,
            fault=fault,
            settings={**FAULT_SETTINGS, **(settings or {})},
            log_path=log_path,
        )
        worker = WorkerProcess(process, log_path, worker_id)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        stop(worker.process, timeout=10)
        # Shown by pytest only when the test failed.
        print(f"--- log of worker {worker.worker_id} (exit {worker.process.returncode}) ---\n{worker.log()[-6000:]}")


@pytest.fixture(autouse=True)
def redis_back_in_order(redis_server):
    """Whatever a test did to the server (pause, OOM, read-only), undo it."""
    yield
    if redis_server.process is not None and redis_server.process.poll() is None:
        redis_server.resume()
        client = redis_server.client()
        client.config_set("maxmemory", 0)
        client.config_set("maxmemory-policy", "noeviction")
        client.replicaof("NO", "ONE")
        client.close()


def executions(path):
    """How many times each line was appended: real runs, not recorded ones."""
    if not path.exists():
        return collections.Counter()
    return collections.Counter(path.read_text().split())


def runs_counted(client):
    """How many times each label really ran, as counted in Redis by the
    fault tasks (see fault_tasks.count_run)."""
    from tests.faults.fault_tasks import RUNS_KEY

    return collections.Counter({k.decode(): int(v) for k, v in client.hgetall(RUNS_KEY).items()})


def statuses(ids):
    return dict(TaskRecord.objects.filter(id__in=ids).values_list("id", "status"))


def all_final(ids, status=TaskStatus.SUCCESSFUL):
    def check():
        found = statuses(ids)
        return len(found) == len(ids) and set(found.values()) == {status}

    return check


def count_status(ids, status=TaskStatus.SUCCESSFUL):
    return TaskRecord.objects.filter(id__in=ids, status=status).count()


def redis_leftovers(client, queue_key=QUEUE):
    """Every non-empty key where a task of the queue could still sit."""
    names = [queue_key, keys.recovered(queue_key), keys.delayed(queue_key), keys.task_ids(queue_key)]
    names += [k.decode() for k in client.scan_iter(match=keys.processing(queue_key, "*"))]
    found = {}
    for name in names:
        kind = client.type(name).decode()
        size = {"list": client.llen, "zset": client.zcard, "set": client.scard}.get(kind)
        if size is not None and size(name):
            found[name] = size(name)
    return found


def kill(worker):
    worker.process.send_signal(signal.SIGKILL)
    worker.process.wait(10)
