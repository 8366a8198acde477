"""Redis Cluster (DESIGN section 10): three masters with a replica each,
made by `redis-cli --cluster create`, serving the queues and the channel.

A representative run of the worker and channel behaviour against the
cluster (enqueue and drain, the seed's raw LPUSH, retry, dead letters,
recovery of a killed worker's tasks, priorities, sharded publish/subscribe),
then SIGKILL of the master holding a queue: its replica takes over and no
task is lost or run twice. One deployment serves the module; each test
starts from empty masters.
"""

import json
import signal

import pytest
from django.core.cache import caches

from tasks.channel.publish import publish
from tasks.exceptions import ChannelUnavailable
from tasks.models import ReceivedMessage, TaskRecord, TaskStatus
from tasks.queue.backend import queue_for
from tasks.queue.connection import get_redis, reset_clients
from tasks.queue.server import Server
from tasks.tasks import always_fails
from tasks.web.health import check_all
from tasks.worker.loop import Worker
from tests.fixture_tasks import append_slowly, append_to_file, sleep_for
from tests.processes import manage, run_manage, stop, wait_for
from tests.topology_servers import FAILOVER_SETTINGS, ClusterDeployment, binaries, wait_until

pytestmark = [
    pytest.mark.topology,
    pytest.mark.no_redis,  # not the suite's server: a deployment of its own
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(binaries() is None, reason="redis-server and redis-cli (package redis-server) are needed"),
]

CHANNEL = "task:pubsub:channel"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    deployment = ClusterDeployment(tmp_path_factory.mktemp("cluster")).start()
    yield deployment
    deployment.stop()


@pytest.fixture
def url(cluster, settings):
    settings.MQ_REDIS_URL = cluster.url
    reset_clients()
    for node in cluster.nodes:
        if node.process and node.process.poll() is None and node.client().info("replication")["role"] == "master":
            node.client().flushall()
    yield cluster.url
    reset_clients()


def drain(**kwargs):
    return Worker(queue_names=["default", "slow"], burst=True, worker_id="cluster-worker", **kwargs).run()


def test_queues_live_on_different_masters_and_drain(cluster, url, tmp_path):
    default, slow = queue_for("default"), queue_for("slow")
    assert cluster.owner_of(default.key) is not cluster.owner_of(slow.key)
    log = tmp_path / "runs.txt"
    ids = [append_to_file.enqueue(str(log), f"d{n}").id for n in range(50)]
    ids += [append_to_file.using(queue_name="slow").enqueue(str(log), f"s{n}").id for n in range(50)]
    # The seed's key name, pushed raw by a producer that knows nothing of mqsite.
    get_redis().lpush("task:prodcons:queue", "5")
    assert drain() == 101
    assert TaskRecord.objects.filter(id__in=ids, status=TaskStatus.SUCCESSFUL).count() == 100
    assert TaskRecord.objects.get(task_path="tasks.tasks.cook_dish").status == TaskStatus.SUCCESSFUL
    assert sorted(log.read_text().split()) == sorted([f"d{n}" for n in range(50)] + [f"s{n}" for n in range(50)])
    status = run_manage(url, "queue_status", "--json")
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert document["redis"]["kind"] == "cluster"
    assert set(document["redis"]["master"].split(",")) == {
        n.address for n in cluster.nodes if n.client().info("replication")["role"] == "master"
    }
    assert {name: q["pending"] + q["in_flight"] for name, q in document["queues"].items()} == {"default": 0, "slow": 0}
    assert document["history"]["SUCCESSFUL"] == 101


def test_the_cache_goes_through_the_same_client(url):
    cache = caches.create_connection("default")  # a fresh one: the shared one may hold an earlier test's client
    cache.set("greeting", {"hello": "cluster"}, timeout=30)
    assert cache.get("greeting") == {"hello": "cluster"}
    assert cache.client.get_client() is get_redis()


def test_retry_then_dead_letter(url):
    result = always_fails.enqueue("boom")
    drain()
    row = TaskRecord.objects.get(id=result.id)
    assert (row.status, row.attempts) == (TaskStatus.FAILED, 3)
    assert [d["id"] for d in queue_for("default").dead_letters()] == [result.id]


def test_priorities_on_a_cluster(url, tmp_path, settings):
    settings.MQ_MAX_BATCH = 1
    log = tmp_path / "runs.txt"
    for n in range(10):
        for priority in (0, -5, 5):
            append_to_file.using(priority=priority).enqueue(str(log), f"{priority}:{n}")
    drain()
    order = [int(line.split(":")[0]) for line in log.read_text().split()]
    assert order == [5] * 10 + [0] * 10 + [-5] * 10


@pytest.mark.slow
def test_a_killed_workers_tasks_are_recovered(url, tmp_path):
    log = tmp_path / "runs.txt"
    slow = sleep_for.using(queue_name="slow").enqueue(3)
    ids = [slow.id] + [append_to_file.using(queue_name="slow").enqueue(str(log), f"l{i}").id for i in range(20)]
    victim = manage(url, "listen_queue", "--queue", "slow", "--worker-id", "victim", settings=FAILOVER_SETTINGS)
    wait_for(
        lambda: TaskRecord.objects.filter(id=slow.id, status=TaskStatus.RUNNING).exists(),
        timeout=30,
        message="slow task running",
    )
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    rescuer = manage(url, "listen_queue", "--queue", "slow", "--worker-id", "rescuer", settings=FAILOVER_SETTINGS)
    try:
        wait_for(
            lambda: TaskRecord.objects.filter(id__in=ids, status=TaskStatus.SUCCESSFUL).count() == 21,
            timeout=60,
            interval=0.25,
            message="every task done by the rescuer, the killed one included",
        )
    finally:
        stop(rescuer)
    assert sorted(log.read_text().split()) == sorted(f"l{i}" for i in range(20))
    assert TaskRecord.objects.get(id=slow.id).worker == "rescuer"


def test_sharded_publish_reaches_a_listener_and_is_counted(url, tmp_path, cluster):
    other = "news:eu"
    assert cluster.owner_of(CHANNEL) is not cluster.owner_of(other)  # two legs, two masters
    listener = manage(
        url,
        "listen_channel",
        "--listener-id",
        "cl1",
        "--channel",
        CHANNEL,
        "--channel",
        other,
        log_path=tmp_path / "l.log",
    )
    try:
        # PUBSUB SHARDNUMSUB, asked of each channel's own master.
        def counts():
            return Server().channel_subscribers([{"channels": [other]}])

        wait_for(
            lambda: counts() == {CHANNEL: 1, other: 1}, timeout=30, interval=0.25, message="SSUBSCRIBE on both masters"
        )
        assert publish("to the default channel", CHANNEL) == 1
        assert publish({"region": "eu"}, other) == 1
        wait_for(lambda: ReceivedMessage.objects.count() == 2, timeout=20, message="both messages received")
    finally:
        stop(listener)
    assert set(ReceivedMessage.objects.values_list("channel", "payload")) == {
        (CHANNEL, "to the default channel"),
        (other, '{"region":"eu"}'),
    }


def test_a_pattern_subscription_is_a_clear_error(url):
    done = run_manage(url, "listen_channel", "--pattern", "news:*", timeout=30)
    assert done.returncode != 0
    assert "pattern subscriptions cannot be sharded" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_sigkill_of_a_master_holding_a_queue_loses_no_task(cluster, url, tmp_path):
    log = tmp_path / "runs.txt"
    key = queue_for("slow").key
    calls = [((str(log), f"t{n}", 0.005), {}) for n in range(500)]
    ids = {
        r.id
        for r in append_slowly.using(queue_name="slow")
        .get_backend()
        .enqueue_many(append_slowly.using(queue_name="slow"), calls)
    }
    worker = manage(
        url,
        "listen_queue",
        "--queue",
        "slow",
        "--worker-id",
        "survivor",
        settings=FAILOVER_SETTINGS,
        log_path=tmp_path / "w.log",
    )
    # A channel in the queue's slot: its listener's master is killed too.
    channel = f"{{{key}}}:news"
    listener = manage(url, "listen_channel", "--channel", channel, "--listener-id", "cl2", log_path=tmp_path / "l.log")
    def done():
        return TaskRecord.objects.filter(id__in=ids, status=TaskStatus.SUCCESSFUL).count()

    try:
        wait_for(lambda: done() >= 50, timeout=60, interval=0.25, message="some tasks done")
        victim = cluster.owner_of(key)
        assert cluster.owner_of(channel) is victim
        victim.kill()
        wait_until(lambda: cluster.owner_of(key) is not victim, 30, "the replica to take the slot over")
        assert done() < len(ids)  # the kill really was mid-run
        wait_for(lambda: done() == len(ids), timeout=120, interval=0.25, message="every task done after the failover")
        assert worker.poll() is None, "the worker exited"

        # At-most-once: publish until the resubscribed listener hears one.
        def heard():
            try:
                publish("after the failover", channel)
            except ChannelUnavailable:  # this process's client still learning the new slot map
                return False
            return ReceivedMessage.objects.filter(channel=channel).exists()

        wait_for(heard, timeout=30, interval=0.5, message="the listener to resubscribe on the new master")
        assert listener.poll() is None, "the listener exited"
    finally:
        stop(worker)
        stop(listener)
    runs = log.read_text().split()
    assert len(runs) == len(set(runs)) == len(ids), "a task was lost or ran twice"
    healthy, report = check_all()
    assert healthy and victim.address not in report["redis"]["master"]
    worker_log = (tmp_path / "w.log").read_text()
    assert worker_log.count("event=redis_down") == worker_log.count("event=redis_back") <= 1, worker_log[-3000:]
    # The killed master comes back as a replica of its successor.
    victim.start()
    wait_until(cluster.settled, 30, "the cluster to settle with the old master back")
