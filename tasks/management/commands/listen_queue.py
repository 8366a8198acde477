import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser, CommandError

from tasks.conf import mq_settings
from tasks.queue import presence
from tasks.exceptions import ForcedStop
from tasks.management.process import CONSUMER_CHECKS, exit_now_if_tasks_left_threads, install_stop_handlers, require_redis, set_verbosity
from tasks.worker.loop import Worker


class Command(BaseCommand):
    help = "Run a worker: take tasks from Redis queues, run them, record each outcome."
    requires_system_checks = CONSUMER_CHECKS

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--queue",
            action="append",
            dest="queues",
            metavar="NAME",
            help="Queue to consume (repeat for several, first has priority). Default: default.",
        )
        parser.add_argument("--burst", action="store_true", help="Drain what is queued, then exit 0.")
        parser.add_argument("--max-tasks", type=int, metavar="N", help="Exit 0 after running N tasks.")
        parser.add_argument(
            "--concurrency",
            type=int,
            metavar="N",
            help="Run up to N tasks at once: plain tasks in threads, async def tasks on the worker's "
            "event loop. Default: MQ_WORKER_CONCURRENCY (1).",
        )
        parser.add_argument(
            "--worker-id",
            metavar="ID",
            help="Stable id (e.g. the systemd instance). A worker restarted with the same id first "
            "returns its own leftover in-flight tasks. Default: host-pid.",
        )

    def handle(
        self,
        *args: Any,
        queues: list[str] | None = None,
        burst: bool = False,
        max_tasks: int | None = None,
        worker_id: str | None = None,
        concurrency: int | None = None,
        verbosity: int = 1,
        **options: Any,
    ) -> None:
        require_redis()
        if max_tasks is not None and max_tasks < 1:
            raise CommandError("--max-tasks must be at least 1.")
        if concurrency is not None and concurrency < 1:
            raise CommandError("--concurrency must be at least 1.")
        if worker_id is not None and not presence.valid_id(worker_id):
            raise CommandError(f"--worker-id may use {presence.MEMBER_ID_RULE}.")
        queues = queues or ["default"]
        unknown = [q for q in queues if not q.strip()]
        if unknown:
            raise CommandError("--queue needs a name.")
        set_verbosity(verbosity)
        worker = Worker(queue_names=queues, worker_id=worker_id, burst=burst, max_tasks=max_tasks, concurrency=concurrency)
        install_stop_handlers(worker.request_stop)
        before = set(threading.enumerate())
        try:
            processed = worker.run()
        except ForcedStop as stop:
            exit_now_if_tasks_left_threads(before, int(stop.code or 1))
            raise
        if verbosity > 1:
            self.stderr.write(f"processed {processed} tasks from {', '.join(mq_settings.queue_key(q) for q in queues)}")
        exit_now_if_tasks_left_threads(before, 0)
