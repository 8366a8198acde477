"""Redis Sentinel (DESIGN section 10): a real master, replica and three
sentinels; two workers and a listener ride out a failover by themselves.

Each test starts its own deployment (tests/topology_servers.py), drains
2,000 tasks with two `listen_queue` processes and one `listen_channel`
process, and fails the master over in the middle of the run: once by
`SENTINEL FAILOVER`, once by SIGKILL. Then every task is SUCCESSFUL exactly
once in the history (a task in flight at the switch may have run twice, never lost), the same worker processes are
still running, and the listener receives what is published to the new master.
"""

import io
import json

import pytest
from django.conf import settings
from django.core.management import call_command

from tasks.channel.publish import publish
from tasks.exceptions import ChannelUnavailable
from tasks.models import ReceivedMessage, TaskRecord, TaskStatus
from tasks.queue.connection import reset_clients
from tasks.web.health import check_all
from tests.fixture_tasks import append_slowly
from tests.processes import manage, stop, wait_for
from tests.topology_servers import FAILOVER_SETTINGS, SentinelDeployment, binaries

pytestmark = [
    pytest.mark.topology,
    pytest.mark.no_redis,  # not the suite's server: a deployment of its own
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(binaries() is None, reason="redis-server and redis-cli (package redis-server) are needed"),
]

TASKS = 2000


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory):
    """One deployment for the module (starting one takes seconds): each
    failover leaves a master and a replica behind, ready for the next."""
    sentinel = SentinelDeployment(tmp_path_factory.mktemp("sentinel")).start()
    yield sentinel
    sentinel.stop()


@pytest.fixture
def deployment(sentinels, settings):
    settings.MQ_REDIS_URL = sentinels.url
    reset_clients()
    sentinels.empty_and_settled()
    yield sentinels
    reset_clients()


def queue_status(*args):
    out = io.StringIO()
    call_command("queue_status", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def successful(ids):
    return TaskRecord.objects.filter(id__in=ids, status=TaskStatus.SUCCESSFUL).count()


def drain_through_a_failover(deployment, tmp_path, fail_over):
    """Run the scenario; ``fail_over(deployment)`` is called mid-run."""
    log = tmp_path / "runs.txt"
    calls = [((str(log), f"task-{n}", 0.002), {}) for n in range(TASKS)]
    results = append_slowly.get_backend().enqueue_many(append_slowly, calls)
    ids = {result.id for result in results}
    url = deployment.url
    workers = [
        manage(url, "listen_queue", "--worker-id", f"w{i}", settings=FAILOVER_SETTINGS, log_path=tmp_path / f"w{i}.log")
        for i in range(2)
    ]
    listener = manage(
        url, "listen_channel", "--listener-id", "l1", settings=FAILOVER_SETTINGS, log_path=tmp_path / "l1.log"
    )
    try:
        wait_for(lambda: successful(ids) >= TASKS // 10, timeout=60, interval=0.25, message="a tenth of the tasks done")
        old_master = deployment.master_address()
        fail_over(deployment)
        wait_for(lambda: deployment.master_address() != old_master, timeout=30, message="a new master")
        # The failover really happened mid-run: work was left for the new master.
        assert successful(ids) < TASKS
        new_master = deployment.master_address()

        # Publish-subscribe is at-most-once: a message published while the
        # listener resubscribes is lost, so publish until one arrives.
        def received_after_failover():
            try:
                publish(f"after {new_master}", "task:pubsub:channel")
            except ChannelUnavailable:
                return False  # the sentinels still settling: a clear refusal, tried again
            return ReceivedMessage.objects.filter(payload=f"after {new_master}").exists()

        wait_for(received_after_failover, timeout=30, interval=0.5, message="the listener to hear the new master")
        wait_for(lambda: successful(ids) == TASKS, timeout=120, interval=0.25, message="every task done")
        assert all(worker.poll() is None for worker in workers), "a worker exited (or was restarted)"
        assert listener.poll() is None
    finally:
        for process in [*workers, listener]:
            stop(process)

    rows = TaskRecord.objects.filter(id__in=ids)
    assert rows.count() == TASKS and set(rows.values_list("status", flat=True)) == {TaskStatus.SUCCESSFUL}
    # Every task ran. A task in flight at the switch may have run twice
    # (delivery is at-least-once): a worker's batch taken from the old master
    # in the second before it left it is still in the new master's queue.
    # Its history row is still one SUCCESSFUL row, checked above.
    runs = log.read_text().split()
    assert set(runs) == {f"task-{n}" for n in range(TASKS)}
    print(f"tasks run twice across the failover: {len(runs) - TASKS}")

    # Where writes go now, named by queue_status and /healthz.
    # (In this process: the command is the same, a child would only add its start-up time.)
    assert json.loads(queue_status("--json"))["redis"] == {"kind": "sentinel", "master": new_master}
    assert f"redis sentinel: master={new_master}" in queue_status()
    healthy, report = check_all()
    assert healthy and report["redis"]["master"] == new_master

    # One line when the master went, one when the new one answered (or none
    # at all for a worker that was between calls); never a crash loop.
    for i in range(2):
        worker_log = (tmp_path / f"w{i}.log").read_text()
        downs, backs = worker_log.count("event=redis_down"), worker_log.count("event=redis_back")
        assert downs == backs <= 1, worker_log[-3000:]
        assert worker_log.count("event=master_moved") <= 1, worker_log[-3000:]
        assert "Traceback" not in worker_log
    listener_log = (tmp_path / "l1.log").read_text()
    assert listener_log.count("event=channel_down") == listener_log.count("event=resubscribed") <= 1, listener_log[
        -3000:
    ]
    return old_master, new_master


@pytest.mark.slow
def test_sentinel_failover_mid_run_loses_and_repeats_nothing(deployment, tmp_path):
    drain_through_a_failover(deployment, tmp_path, lambda d: d.failover())


@pytest.mark.slow
def test_sigkill_of_the_master_mid_run_loses_and_repeats_nothing(deployment, tmp_path):
    old_master, _ = drain_through_a_failover(deployment, tmp_path, lambda d: d.node_at(d.master_address()).kill())
    deployment.revive(deployment.node_at(old_master))


def test_the_settings_url_reaches_the_master(deployment):
    """The URL form the README documents, with the sentinels' own password."""
    assert settings.MQ_REDIS_URL.startswith("redis+sentinel://:")
    healthy, report = check_all()
    assert healthy and report["redis"]["kind"] == "sentinel"
    assert report["redis"]["master"] == deployment.master_address()
