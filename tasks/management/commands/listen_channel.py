from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandParser, CommandError

from tasks.queue import presence
from tasks.channel.listener import Listener
from tasks.management.process import CONSUMER_CHECKS, install_stop_handlers, require_redis, set_verbosity
from tasks.channel.publish import CHANNEL_MAX_LENGTH


class Command(BaseCommand):
    help = (
        "Run a channel listener: receive every message broadcast on the channels and patterns, "
        "hand each to its configured handler, record each receipt. Delivery is at-most-once: "
        "messages published while no listener is connected are lost."
    )
    requires_system_checks = CONSUMER_CHECKS

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--channel",
            action="append",
            dest="channels",
            metavar="NAME",
            help="Channel to subscribe to (repeat for several). Default: MQ_DEFAULT_CHANNEL "
            "(task:pubsub:channel), unless only --pattern is given.",
        )
        parser.add_argument(
            "--pattern",
            action="append",
            dest="patterns",
            metavar="PATTERN",
            help="Glob-style channel pattern to subscribe to, e.g. 'news:*' (repeat for several).",
        )
        parser.add_argument("--max-messages", type=int, metavar="N", help="Exit 0 after receiving N messages.")
        parser.add_argument(
            "--listener-id",
            metavar="ID",
            help="Stable id shown in the registry and recorded on each receipt (e.g. the systemd "
            "instance). Default: host-pid.",
        )

    def handle(
        self,
        *args: Any,
        channels: list[str] | None = None,
        patterns: list[str] | None = None,
        max_messages: int | None = None,
        listener_id: str | None = None,
        verbosity: int = 1,
        **options: Any,
    ) -> None:
        require_redis()
        if max_messages is not None and max_messages < 1:
            raise CommandError("--max-messages must be at least 1.")
        if listener_id is not None and not presence.valid_id(listener_id):
            raise CommandError(f"--listener-id may use {presence.MEMBER_ID_RULE}.")
        for option, names in (("--channel", channels), ("--pattern", patterns)):
            for name in names or []:
                if not name.strip():
                    raise CommandError(f"{option} needs a name.")
                if len(name) > CHANNEL_MAX_LENGTH:
                    raise CommandError(f"{option} {name[:40]!r}... is longer than {CHANNEL_MAX_LENGTH} characters.")
        set_verbosity(verbosity)
        try:
            listener = Listener(channels=channels, patterns=patterns, listener_id=listener_id, max_messages=max_messages)
        except (ImproperlyConfigured, ValueError) as exc:  # ValueError: --pattern on Redis Cluster
            raise CommandError(str(exc)) from None
        install_stop_handlers(listener.request_stop)
        received = listener.run()
        if verbosity > 1:
            self.stderr.write(f"received {received} messages")
