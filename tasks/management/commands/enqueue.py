import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser, CommandError

from tasks import registry
from tasks.exceptions import ArgumentsNotStorable, MessageTooLarge, QueueUnavailable
from tasks.compat import InvalidTaskError
from tasks.management.process import require_redis


def _json_arg(text: str, kind: type[list] | type[dict], option: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"{option} is not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        raise CommandError(f"{option} must be a JSON {'array' if kind is list else 'object'}.")
    return value


class Command(BaseCommand):
    help = "Enqueue a registered task; prints one task id per line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("task_path", metavar="TASK_PATH", help="Dotted path of a @task, e.g. tasks.tasks.cook_dish.")
        # dest avoids BaseCommand's own "args" parameter.
        parser.add_argument("--args", dest="task_args", default="[]", metavar="JSON", help="Positional arguments, a JSON array.")
        parser.add_argument("--kwargs", dest="task_kwargs", default="{}", metavar="JSON", help="Keyword arguments, a JSON object.")
        parser.add_argument("--count", type=int, default=1, metavar="N", help="Enqueue N copies (one round trip).")
        parser.add_argument("--queue", metavar="NAME", help="Queue to use instead of the task's own.")

    def handle(
        self, *args: Any, task_path: str, task_args: str, task_kwargs: str, count: int, queue: str | None, **options: Any
    ) -> None:
        require_redis()
        task = registry.get(task_path)
        if task is None:
            known = ", ".join(registry.paths())
            raise CommandError(f"Unknown task {task_path!r}. Registered tasks: {known}")
        if count < 1:
            raise CommandError("--count must be at least 1.")
        call = (_json_arg(task_args, list, "--args"), _json_arg(task_kwargs, dict, "--kwargs"))
        try:
            if queue:
                task = task.using(queue_name=queue)
            # settings.TASKS names RedisTaskBackend, which adds enqueue_many to the API.
            results = task.get_backend().enqueue_many(task, [call] * count)  # type: ignore[attr-defined]
        except (InvalidTaskError, ArgumentsNotStorable) as exc:
            raise CommandError(str(exc)) from None
        except (MessageTooLarge, QueueUnavailable) as exc:
            raise CommandError(f"Nothing was enqueued: {exc}") from None
        self.stdout.write("\n".join(result.id for result in results))
