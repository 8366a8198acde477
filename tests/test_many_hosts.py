"""Workers on three hosts (network namespaces) share one Redis and one
PostgreSQL; one host is cut off mid-run (its link down) and comes back.

Its lease lapses, the other hosts take its tasks back and finish them, and
once its link is up again it runs none of those: before each task of the
batch it took it asks Redis whether the task is still its own (the
executor's ownership check), and a finished row is never claimed again.
A task the cut host ran whose outcome it could not record runs a second
time on another host (at-least-once), and is recorded once.
"""

import json
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from django.db import connection

from tasks.models import TaskRecord, TaskStatus
from tasks.queue import keys
from tasks.queue.connection import reset_clients
from tests import netns
from tests.fixture_tasks import record_run_as
from tests.processes import BASE_DIR, child_env, database_url, stop, wait_for
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.topology]

QUEUE_KEY = "task:prodcons:queue"
TASKS = 36
TASK_SECONDS = 0.5
# Batches of about six of these tasks: the cut host holds several at once,
# runs some while its lease still seems held, and must drop the rest.
WORKER_SETTINGS = {"MQ_BATCH_TARGET_SECONDS": 3.0}


@pytest.fixture
def network():
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (DATABASE_URL=postgres://...): SQLite cannot be shared between hosts")
    net = netns.Network(hosts=3)
    try:
        yield net.create()
    finally:
        net.remove()


@pytest.fixture
def shared_redis(network, tmp_path, settings):
    """A Redis on the bridge address (for the hosts) and on loopback (for the test)."""
    server = RedisServer(tmp_path / "redis")
    server.start("--bind", f"{network.address} 127.0.0.1")
    settings.MQ_REDIS_URL = server.url
    reset_clients()
    yield server
    reset_clients()
    server.kill()


@pytest.fixture
def postgres_relay(network):
    s = connection.settings_dict
    relay = netns.TcpRelay(network.address, (s["HOST"] or "127.0.0.1", int(s["PORT"] or 5432))).start()
    yield relay
    relay.stop()


def start_worker(network, host, redis, relay, log_path):
    """`listen_queue` inside ``host``, reaching both databases through the bridge."""
    env = child_env(redis.url.replace("@127.0.0.1:", f"@{network.address}:"), **WORKER_SETTINGS)
    url = database_url()
    env["DATABASE_URL"] = url.replace(url.split("@", 1)[1].split("/", 1)[0], f"{network.address}:{relay.port}", 1)
    worker_id = host.rsplit("-", 1)[1]
    argv = [sys.executable, str(BASE_DIR / "manage.py"), "listen_queue", "--worker-id", worker_id]
    with open(log_path, "ab") as log:
        return subprocess.Popen(network.command(host, argv), env=env, cwd=BASE_DIR, stdout=log, stderr=log)


def runs(path):
    """[(task id, worker id)] in the order the runs ended."""
    if not path.exists():
        return []
    return [tuple(line.split()) for line in path.read_text().splitlines()]


def held_ids(redis, worker_id):
    items = redis.client().lrange(keys.processing(QUEUE_KEY, worker_id), 0, -1)
    return {json.loads(item)["id"] for item in items}


def finished(ids):
    return TaskRecord.objects.filter(id__in=ids, status=TaskStatus.SUCCESSFUL).count() == len(ids)


def test_a_host_cut_off_mid_run_loses_its_tasks_to_the_others_and_reruns_nothing(
    network, shared_redis, postgres_relay, tmp_path
):
    path = tmp_path / "runs.txt"
    first = [record_run_as.enqueue(str(path), TASK_SECONDS).id for _ in range(TASKS)]
    workers = {
        host.rsplit("-", 1)[1]: start_worker(network, host, shared_redis, postgres_relay, tmp_path / f"{host}.log")
        for host in network.hosts
    }
    cut_host, cut_id = network.hosts[0], "h1"
    try:
        # Mid-run: h1 is running a task of a batch it holds, more of which wait.
        started = path.with_name(path.name + ".started")

        def h1_mid_batch():
            held = held_ids(shared_redis, cut_id)
            return len(held) > 1 and any(w == cut_id and t in held and (t, w) not in runs(path) for t, w in runs(started))

        wait_for(h1_mid_batch, timeout=60, interval=0.02, message="h1 at work")
        network.cut(cut_host)
        held = held_ids(shared_redis, cut_id)  # h1 can change nothing in Redis any more
        assert held, "h1 held no task when its link went down"

        wait_for(lambda: finished(first), timeout=90, message="the other hosts to finish every task, h1's too")
        taken_back = {task_id for task_id, w in runs(path) if task_id in held and w != cut_id}
        assert taken_back == held, "the tasks h1 held were run by the other hosts"
        ran_before_mend = len(runs(path))

        network.mend(cut_host)
        # New work until h1 takes some: it is back, in the same process.
        second = []
        deadline = time.monotonic() + 120
        while not any(w == cut_id and t in second for t, w in runs(path)):
            assert time.monotonic() < deadline, "h1 did not come back"
            second.append(record_run_as.enqueue(str(path), 0.1).id)
            time.sleep(0.3)
        wait_for(lambda: finished(second), timeout=60, message="the second round")
    finally:
        codes = {worker_id: stop(process, signal.SIGTERM, timeout=60) for worker_id, process in workers.items()}
    assert codes == {"h1": 0, "h2": 0, "h3": 0}, f"workers never restarted, and stop cleanly: {codes}"

    # History: one row per task, every one SUCCESSFUL, after h1's late writes too.
    everything = first + second
    assert TaskRecord.objects.filter(id__in=everything).count() == len(everything)
    assert finished(everything)

    log = runs(path)
    by_host = {worker_id: Counter(t for t, w in log if w == worker_id) for worker_id in workers}
    for task_id in first:
        assert sum(by_host[w][task_id] for w in ("h2", "h3")) <= 1, f"{task_id} ran twice on the connected hosts"
        assert by_host["h1"][task_id] <= 1
        assert sum(c[task_id] for c in by_host.values()) >= 1
    # A task runs twice only when h1 ran it and could not record it.
    twice = {t for t in first if sum(c[t] for c in by_host.values()) == 2}
    assert twice <= {t for t in first if by_host["h1"][t]}
    # Back on the network, h1 ran none of the first round: all were finished.
    assert not [t for t, w in log[ran_before_mend:] if w == cut_id and t in first]
