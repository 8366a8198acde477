"""Schedules fired by real worker processes: three workers started together
fire each tick of an every-second schedule exactly once (pushed once, run
once, no gaps), and a paused schedule fires on none of them. Catch-up after
an outage and DST are driven with an injected clock in test_schedules."""

import json
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest

from tasks.models import TaskRecord, TaskStatus
from tasks.schedules.models import ScheduleState
from tests.processes import manage, stop, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TICKS = 6


def tick_of(task_id):
    return datetime.strptime(task_id.rsplit(":", 1)[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt_timezone.utc)


def test_three_workers_fire_every_tick_exactly_once(redis_url, redis_client, tmp_path):
    runs = tmp_path / "runs.txt"
    spec = {"task": "tests.fixture_tasks.record_run", "cron": "* * * * * *", "args": [str(runs)]}
    settings = {
        "MQ_SCHEDULES": {"every-second": spec, "held": {**spec, "catch_up": "all"}, "pushed": {**spec, "queue": "slow"}},
        "MQ_SCHEDULE_INTERVAL_SECONDS": 0.1,
    }
    ScheduleState.objects.create(name="held", paused=True, last_tick_at=datetime.now(dt_timezone.utc))
    logs = [tmp_path / f"w{i}.log" for i in range(3)]
    workers = [
        manage(redis_url, "listen_queue", "--worker-id", f"w{i}", settings=settings, log_path=log) for i, log in enumerate(logs)
    ]
    try:
        fired = TaskRecord.objects.filter(id__startswith="sched:every-second:", status=TaskStatus.SUCCESSFUL)
        wait_for(lambda: fired.count() >= TICKS, timeout=60, message=f"{TICKS} ticks run")
    finally:
        for worker in workers:
            stop(worker)
    ids = sorted(TaskRecord.objects.filter(id__startswith="sched:every-second:").values_list("id", flat=True))
    # No gaps: one row per second from the first tick to the last.
    ticks = [tick_of(task_id) for task_id in ids]
    assert ticks == [ticks[0] + timedelta(seconds=n) for n in range(len(ticks))]
    # Exactly once: each tick pushed by one worker and run once.
    fired_lines = [line for log in logs for line in log.read_text().splitlines() if "event=schedule_fired schedule=every-second" in line]
    assert sorted(line.split("task_id=")[1].split()[0] for line in fired_lines) == ids
    # Run once each: every tick that ran ran once; the workers were stopped
    # while the newest tick could still be waiting, so it may not have run.
    ran = sorted(runs.read_text().split())
    finished = sorted(TaskRecord.objects.filter(id__in=ids, status=TaskStatus.SUCCESSFUL).values_list("id", flat=True))
    assert ran == finished and len(finished) >= TICKS
    unrun = TaskRecord.objects.filter(id__in=set(ids) - set(finished))
    # Never run, or claimed and handed back at the stop: READY, no attempt counted.
    assert set(unrun.values_list("status", "attempts")) <= {(TaskStatus.READY, 0)}
    assert set(TaskRecord.objects.filter(id__in=finished).values_list("attempts", flat=True)) == {1}
    # The paused schedule fired on no host, while the other one ticked beside it.
    assert not TaskRecord.objects.filter(id__startswith="sched:held:").exists()
    # The "slow" queue has no consumer here, so Redis shows every push the
    # workers made for that schedule: one per tick, none twice.
    pushed = [json.loads(item)["id"] for item in redis_client.lrange("mq:queue:slow", 0, -1)]
    slow_ids = list(TaskRecord.objects.filter(id__startswith="sched:pushed:").values_list("id", flat=True))
    assert len(slow_ids) >= TICKS - 1 and sorted(pushed) == sorted(slow_ids)
