import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser, CommandError
from redis.exceptions import RedisError

from tasks.management.process import require_redis
from tasks.web.status import collect_status


class Command(BaseCommand):
    help = "Show queues, workers, listeners and history counts."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print the stable JSON document (for scripts and monitoring).")

    def handle(self, *args: Any, json: bool = False, **options: Any) -> None:
        require_redis()
        try:
            status = collect_status()
        except RedisError as exc:
            raise CommandError(f"Redis does not answer: {exc}") from None
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
        self.stdout.write("history " + " ".join(f"{k}={v}" for k, v in status["history"].items()))
        for warning in status.get("warnings", []):
            self.stderr.write(f"warning: {warning}")


def _dumps(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True)
