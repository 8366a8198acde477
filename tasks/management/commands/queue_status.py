import json

from django.core.management.base import BaseCommand, CommandError
from redis.exceptions import RedisError

from tasks.management.process import require_redis
from tasks.schedule_status import overview
from tasks.web.status import collect_status


class Command(BaseCommand):
    help = "Show queues, workers, listeners and history counts."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="Print the stable JSON document (for scripts and monitoring).")

    def handle(self, *args, json=False, **options):
        require_redis()
        try:
            status = collect_status()
        except RedisError as exc:
            raise CommandError(f"Redis does not answer: {exc}") from None
        schedules = overview()  # issue 10 hook: periodic tasks, once there are any
        if schedules:
            status["schedules"] = schedules
        if json:
            self.stdout.write(_dumps(status))
            return
        for name, q in status["queues"].items():
            self.stdout.write(
                f"queue {name} ({q['key']}): pending={q['pending']} in_flight={q['in_flight']} "
                f"delayed={q['delayed']} dead={q['dead']}"
            )
        for w in status["workers"]:
            self.stdout.write(f"worker {w['id']}: queues={','.join(w['queues'])} processed={w['processed']} last_seen={w['last_seen']}")
        for listener in status["listeners"]:
            self.stdout.write(
                f"listener {listener['id']}: channels={','.join(listener.get('channels', []))} "
                f"received={listener.get('received', 0)} last_seen={listener['last_seen']}"
            )
        for name, subscribers in status.get("channels", {}).items():
            self.stdout.write(f"channel {name}: subscribers={subscribers} (PUBSUB NUMSUB)")
        for s in status.get("schedules", []):  # issue 10 hook
            self.stdout.write(
                f"schedule {s['name']}: task={s['task']} cron={s['cron']!r} "
                f"next_run={s['next_run']} last_run={s['last_run']} paused={s['paused']}"
            )
        self.stdout.write("history " + " ".join(f"{k}={v}" for k, v in status["history"].items()))
        for warning in status.get("warnings", []):
            self.stderr.write(f"warning: {warning}")


def _dumps(value):
    return json.dumps(value, indent=2, sort_keys=True)
