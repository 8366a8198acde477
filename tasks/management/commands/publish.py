from typing import Any

from django.core.management.base import BaseCommand, CommandParser, CommandError

from tasks.management.process import require_redis
from tasks.channel.publish import publish
from tasks.exceptions import ChannelUnavailable


class Command(BaseCommand):
    help = (
        "Broadcast MESSAGE on a channel and print how many listeners received it, as a bare integer. "
        "Listeners that are not connected at this moment never get it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "message",
            metavar="MESSAGE",
            help="Text to publish, sent exactly as given (JSON text reaches handlers parsed).",
        )
        parser.add_argument("--channel", metavar="NAME", help="Channel to publish on. Default: MQ_DEFAULT_CHANNEL.")

    def handle(self, *args: Any, message: str, channel: str | None = None, **options: Any) -> None:
        require_redis()
        try:
            receivers = publish(message, channel=channel, publisher="command")
        except (ChannelUnavailable, ValueError) as exc:  # ValueError covers MessageTooLarge and a bad channel
            raise CommandError(f"Nothing was published: {exc}") from None
        self.stdout.write(str(receivers))
