import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser, CommandError
from redis.exceptions import RedisError

from tasks.management.process import require_redis
from tasks.web.status import read_snapshot


class Command(BaseCommand):
    help = "Show queues, workers, listeners and history counts."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print the stable JSON document (for scripts and monitoring).")

    def handle(self, *args: Any, json: bool = False, **options: Any) -> None:
        require_redis()
        snapshot = read_snapshot()
        try:
            snapshot.raise_if_down()
        except RedisError as exc:
            raise CommandError(f"Redis does not answer: {exc}") from None
        if json:
            self.stdout.write(_dumps(snapshot.as_status()))
            return
        if snapshot.redis:
            self.stdout.write(f"redis {snapshot.redis['kind']}: master={snapshot.redis['master']}")
        for name, q in snapshot.queues.items():
            self.stdout.write(
                f"queue {name} ({q.key}): pending={q.pending} in_flight={q.in_flight} "
                f"delayed={q.delayed} dead={q.dead} oldest_pending_age={_age(q.oldest_pending_age)}"
            )
        for w in snapshot.workers:
            self.stdout.write(f"worker {w['id']}: queues={','.join(w['queues'])} processed={w['processed']} last_seen={w['last_seen']}")
        for listener in snapshot.listeners:
            self.stdout.write(
                f"listener {listener['id']}: channels={','.join(listener.get('channels', []))} "
                f"received={listener.get('received', 0)} last_seen={listener['last_seen']}"
            )
        for name, subscribers in snapshot.channels.items():
            self.stdout.write(f"channel {name}: subscribers={subscribers} (PUBSUB NUMSUB)")
        for s in snapshot.schedules:
            self.stdout.write(
                f"schedule {s['name']}: task={s['task']} cron={s['cron']!r} "
                f"next_run={s['next_run']} last_run={s['last_run']} paused={s['paused']}"
            )
        self.stdout.write("history " + " ".join(f"{k}={v}" for k, v in snapshot.history.items()))
        for warning in snapshot.warnings:
            self.stderr.write(f"warning: {warning}")


def _age(seconds: float | None) -> str:
    return "unknown" if seconds is None else f"{seconds:.1f}s"


def _dumps(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True)
