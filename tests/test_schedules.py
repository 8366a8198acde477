"""Periodic tasks in one process: tick computation (DST included), fire_due
with an injected clock (catch-up, pause, exactly once), checks, decorator,
admin page and queue_status. The real-process test is test_schedule_processes."""

import importlib
import json
import re
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import Permission, User
from django.core.checks import run_checks
from django.core.management import call_command
from django.test import override_settings

from tasks import schedules
from tasks.models import TaskRecord
from tasks.queue.envelope import ID_PATTERN
from tasks.schedules.models import ScheduleState
from tasks.schedules import Schedule, cron
from tasks.worker.scheduler import fire_due

UTC = dt_timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
QUEUE = "task:prodcons:queue"
T0 = datetime(2026, 5, 4, 12, 0, 0, tzinfo=UTC)


def every_second(catch_up="latest", name="tick"):
    return {name: {"task": "tasks.tasks.noop", "cron": "* * * * * *", "catch_up": catch_up}}


def fired_ticks(name="tick"):
    return sorted(TaskRecord.objects.filter(id__startswith=f"sched:{name}:").values_list("id", flat=True))


def at(seconds):
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def no_decorated(monkeypatch):
    """@cron registrations made by a test stay in that test."""
    monkeypatch.setattr(schedules, "_decorated", {})


# --- ticks -------------------------------------------------------------------


@pytest.mark.parametrize(
    "day, expected_utc",
    [
        # Spring forward: 02:30 does not exist; cronsim runs it at 03:00 CEST, once.
        ((2026, 3, 29), datetime(2026, 3, 29, 1, 0, tzinfo=UTC)),
        # Fall back: 02:30 happens twice; cronsim runs the first (CEST), once.
        ((2026, 10, 25), datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
    ],
)
@override_settings(TIME_ZONE="Europe/Berlin")
def test_a_daily_0230_ticks_once_on_both_dst_days_in_berlin(day, expected_utc):
    schedule = Schedule(name="dst", task="tasks.tasks.noop", cron="30 2 * * *")
    start = datetime(*day, 0, 0, tzinfo=BERLIN)
    end = start + timedelta(days=1)
    assert schedule.ticks_back(end, start, limit=10) == [expected_utc]
    assert schedule.next_after(start) == expected_utc
    assert schedule.task_id(expected_utc) == f"sched:dst:{expected_utc:%Y%m%dT%H%M%SZ}"


def test_ticks_back_includes_until_and_excludes_after():
    schedule = Schedule(name="s", task="tasks.tasks.noop", cron="* * * * * *")
    assert schedule.ticks_back(at(3), at(1), limit=10) == [at(3), at(2)]
    assert schedule.ticks_back(at(3), at(1), limit=1) == [at(3)]
    assert schedule.ticks_back(at(1), at(1), limit=10) == []


def test_the_longest_name_makes_an_id_the_history_and_the_envelope_accept():
    name = "n" * schedules.MAX_NAME_LENGTH
    task_id = Schedule(name=name, task="tasks.tasks.noop", cron="* * * * *").task_id(T0)
    assert len(task_id) == TaskRecord._meta.get_field("id").max_length and ID_PATTERN.match(task_id)
    assert Schedule(name=name, task="", cron="").tick_of(task_id) == T0


# --- firing with an injected clock ---------------------------------------------

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_new_schedule_starts_from_now_then_fires_each_tick_once(redis_client):
    with override_settings(MQ_SCHEDULES=every_second()):
        assert fire_due(at(0.5)) == []  # the past before it was seen is not fired
        assert fire_due(at(1.2)) == ["sched:tick:20260504T120001Z"]
        # Every other worker, on every host, computes the same tick: refused.
        assert fire_due(at(1.3)) == [] and fire_due(at(1.9)) == []
        assert fire_due(at(2.0)) == ["sched:tick:20260504T120002Z"]
    assert fired_ticks() == ["sched:tick:20260504T120001Z", "sched:tick:20260504T120002Z"]
    assert redis_client.llen(QUEUE) == 2  # pushed once each
    state = ScheduleState.objects.get(name="tick")
    assert (state.last_tick_at, state.last_task_id) == (at(2), "sched:tick:20260504T120002Z")


def test_a_second_insert_of_the_same_tick_pushes_nothing_even_with_a_stale_state(redis_client):
    with override_settings(MQ_SCHEDULES=every_second()):
        fire_due(at(0))
        assert len(fire_due(at(1))) == 1
        # A worker that read the state before the first one's update.
        ScheduleState.objects.filter(name="tick").update(last_tick_at=at(0))
        assert fire_due(at(1)) == []
    assert redis_client.llen(QUEUE) == 1 and len(fired_ticks()) == 1


@pytest.mark.parametrize("catch_up, expected", [("latest", [4]), ("all", [2, 3, 4]), ("none", [])])
def test_ticks_missed_while_no_worker_ran_follow_catch_up(catch_up, expected):
    with override_settings(MQ_SCHEDULES=every_second(catch_up), MQ_SCHEDULE_MISFIRE_GRACE_SECONDS=0.5):
        fire_due(at(0))
        assert len(fire_due(at(1.1))) == 1
        # No worker for ticks 2, 3 and 4; one comes back at 4.9.
        fired = fire_due(at(4.9))
        assert fired == [f"sched:tick:20260504T12000{second}Z" for second in expected]
        # Running again: the next tick fires whatever the policy.
        assert fire_due(at(5.0)) == ["sched:tick:20260504T120005Z"]


def test_catch_up_all_is_capped(caplog):
    with override_settings(MQ_SCHEDULES=every_second("all"), MQ_SCHEDULE_CATCH_UP_MAX=5):
        fire_due(at(0))
        fired = fire_due(at(60))
    assert fired == [f"sched:tick:{at(second):%Y%m%dT%H%M%SZ}" for second in range(56, 61)]
    assert "event=schedule_catch_up_capped" in caplog.text


def test_a_paused_schedule_fires_nothing_and_resumes_from_now(redis_client):
    with override_settings(MQ_SCHEDULES=every_second("all")):
        fire_due(at(0))
        ScheduleState.objects.filter(name="tick").pause()
        for second in range(1, 5):  # any number of hosts, any time
            assert fire_due(at(second)) == []
        ScheduleState.objects.filter(name="tick").resume(at(4.5))
        assert fire_due(at(4.6)) == []  # the paused ticks are not caught up
        assert fire_due(at(5)) == ["sched:tick:20260504T120005Z"]
    assert redis_client.llen(QUEUE) == 1


@pytest.mark.parametrize(
    "start, day",
    [(datetime(2026, 3, 28, 12, 0, tzinfo=BERLIN), (2026, 3, 29)), (datetime(2026, 10, 24, 12, 0, tzinfo=BERLIN), (2026, 10, 25))],
)
@override_settings(TIME_ZONE="Europe/Berlin")
def test_fire_due_fires_a_0230_schedule_once_on_each_dst_day(start, day):
    spec = {"dst": {"task": "tasks.tasks.noop", "cron": "30 2 * * *", "catch_up": "all"}}
    with override_settings(MQ_SCHEDULES=spec):
        fire_due(start)
        now = start
        while now < start + timedelta(hours=48):  # every 10 minutes through the day and the next
            now += timedelta(minutes=10)
            fire_due(now)
    ticks = [datetime.strptime(i.split(":")[2], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).astimezone(BERLIN) for i in fired_ticks("dst")]
    assert [t.date() for t in ticks] == [datetime(*day).date(), datetime(*day).date() + timedelta(days=1)]


def test_a_schedule_runs_its_task_in_its_queue_with_its_arguments():
    spec = {"adds": {"task": "tasks.tasks.add", "cron": "* * * * * *", "args": [2, 3], "queue": "slow"}}
    with override_settings(MQ_SCHEDULES=spec):
        fire_due(at(0))
        (task_id,) = fire_due(at(1))
    row = TaskRecord.objects.get(id=task_id)
    assert (row.task_path, row.queue, row.args, row.status) == ("tasks.tasks.add", "slow", [2, 3], "READY")


# --- declaration and checks ------------------------------------------------------


def test_the_decorator_and_the_setting_feed_one_registry(no_decorated):
    import tests.cron_tasks

    importlib.reload(tests.cron_tasks)  # declares its schedule into this test's registry
    path = "tests.cron_tasks.every_five"
    with override_settings(MQ_SCHEDULES=every_second()):
        found = schedules.declared()
        assert set(found) == {"tick", path}
        assert (found[path].task, found[path].cron, found[path].catch_up, found[path].args) == (path, "*/5 * * * *", "all", [1])
        assert not [e for e in run_checks(tags=["mqsite"]) if e.id.startswith("mqsite.E1")]
    # The setting wins a name declared both ways: a deployment can override an app's schedule.
    with override_settings(MQ_SCHEDULES={path: {"task": "tasks.tasks.noop", "cron": "0 3 * * *"}}):
        assert schedules.declared()[path].cron == "0 3 * * *"
    with pytest.raises(TypeError, match="above @task"):
        cron("* * * * *")(lambda: None)


@pytest.mark.parametrize(
    "spec, check_id",
    [
        ({"task": "app.nowhere", "cron": "* * * * *"}, "mqsite.E101"),
        ({"task": "tasks.tasks.noop", "cron": "61 * * * *"}, "mqsite.E102"),
        ({"task": "tasks.tasks.noop", "cron": "every day"}, "mqsite.E102"),
        ({"task": "tasks.tasks.noop", "cron": "* * * * *", "catch_up": "some"}, "mqsite.E103"),
        ({"task": "tasks.tasks.noop", "cron": "* * * * *", "queue": "no-such-queue"}, "mqsite.E103"),
    ],
)
def test_a_schedule_that_cannot_fire_is_a_check_error(spec, check_id):
    with override_settings(MQ_SCHEDULES={"bad": spec}):
        assert [e.id for e in run_checks(tags=["mqsite"]) if e.id.startswith("mqsite.E1")] == [check_id]
        assert fire_due(at(0)) == []  # and a worker skips it


def test_bad_schedule_names_and_shapes_are_check_errors():
    with override_settings(MQ_SCHEDULES={"has space": {"task": "tasks.tasks.noop", "cron": "* * * * *"}}):
        assert "mqsite.E104" in [e.id for e in run_checks(tags=["mqsite"])]
    with override_settings(MQ_SCHEDULES={"x": "0 3 * * *"}):
        assert "mqsite.E100" in [e.id for e in run_checks(tags=["mqsite"])]


# --- admin and queue_status ------------------------------------------------------


def _user(permission=True):
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_schedulestate"))
    if permission:
        user.user_permissions.add(Permission.objects.get(codename="change_schedulestate"))
    return user


def test_the_admin_lists_declared_schedules_with_last_outcome_and_pauses_them(client):
    client.force_login(_user())
    with override_settings(MQ_SCHEDULES=every_second(), TIME_ZONE="UTC"):
        fire_due(at(0))
        (task_id,) = fire_due(at(1))
        TaskRecord.objects.filter(id=task_id).update(status="SUCCESSFUL")
        spec = {**every_second(), "unseen": {"task": "tasks.tasks.noop", "cron": "0 3 * * *"}}
        with override_settings(MQ_SCHEDULES=spec):
            page = client.get("/admin/tasks/schedulestate/")
            assert page.status_code == 200
            body = page.content.decode()
            assert "unseen" in body and "tasks.tasks.noop" in body
            # The last outcome as the task list shows a status: its coloured badge, labelled.
            outcomes = re.findall(r'<td class="field-last_outcome">(.*?)</td>', body)
            assert outcomes == ['<span class="mq-status mq-status-successful">Successful</span>', "-"]  # tick, unseen
            done = client.post(
                "/admin/tasks/schedulestate/", {"action": "pause_schedules", "_selected_action": ["tick"]}, follow=True
            )
    assert "Paused 1 schedule." in done.content.decode()
    assert ScheduleState.objects.get(name="tick").paused and not ScheduleState.objects.get(name="unseen").paused


def test_pausing_needs_the_change_permission(client):
    client.force_login(_user(permission=False))
    with override_settings(MQ_SCHEDULES=every_second()):
        assert client.get("/admin/tasks/schedulestate/").status_code == 200
        client.post("/admin/tasks/schedulestate/", {"action": "pause_schedules", "_selected_action": ["tick"]})
    assert not ScheduleState.objects.get(name="tick").paused


@pytest.mark.parametrize("change", [False, True])
def test_deleting_a_schedule_s_row_resets_it_and_needs_the_change_permission(client, change):
    """A deleted row comes back unpaused: without the change permission, a
    user with the delete permission could resume what was paused."""
    user = _user(permission=change)
    user.user_permissions.add(Permission.objects.get(codename="delete_schedulestate"))
    client.force_login(user)
    with override_settings(MQ_SCHEDULES=every_second()):
        client.get("/admin/tasks/schedulestate/")
        ScheduleState.objects.filter(name="tick").update(paused=True)
        page = client.get("/admin/tasks/schedulestate/").content.decode()
        assert ('value="delete_selected"' in page) is change
        client.post("/admin/tasks/schedulestate/", {"action": "delete_selected", "_selected_action": ["tick"], "post": "yes"})
        client.get("/admin/tasks/schedulestate/")  # re-creates the rows of declared schedules
    assert ScheduleState.objects.get(name="tick").paused is not change


def test_queue_status_lists_schedules_in_its_json():
    with override_settings(MQ_SCHEDULES=every_second()):
        out = StringIO()
        call_command("queue_status", "--json", stdout=out)
    (row,) = json.loads(out.getvalue())["schedules"]
    assert row["name"] == "tick" and row["task"] == "tasks.tasks.noop" and row["cron"] == "* * * * * *"
    assert row["paused"] is False and row["last_run"] is None and row["next_run"]
    out = StringIO()
    call_command("queue_status", "--json", stdout=out)
    assert "schedules" not in json.loads(out.getvalue())


def test_the_index_shows_the_next_firings_soonest_first_and_paused_last(client):
    spec = {
        "nightly": {"task": "tasks.tasks.noop", "cron": "0 3 * * *"},
        "minutely": {"task": "tasks.tasks.noop", "cron": "* * * * *"},
        "stopped": {"task": "tasks.tasks.noop", "cron": "* * * * * *"},
    }
    ScheduleState.objects.create(name="stopped", paused=True)
    with override_settings(MQ_SCHEDULES=spec):
        body = client.get("/").content.decode()
        stats = client.get("/api/stats", HTTP_AUTHORIZATION="Bearer test-token").json()
    section = body[body.index('id="schedules"') :]
    assert section.index("minutely") < section.index("nightly") < section.index("stopped")
    assert "paused" in section[section.index("stopped") :]
    assert {s["name"] for s in stats["schedules"]} == set(spec)
