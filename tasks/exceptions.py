"""Every exception mqsite raises, in one place, so views, commands and the
admin import them without reaching into the layers that raise them.

What the caller should do decides the tree: an ``Unavailable`` is worth
retrying later (nothing was done), a ``ValueError`` never is (the input
itself is refused).
"""

from django.core.exceptions import ImproperlyConfigured
from redis.exceptions import RedisError


class ForcedStop(SystemExit):
    """The second stop signal. Its own class so the worker, which treats a
    SystemExit raised by task code as that task's failure, lets it through."""


class Unavailable(Exception):
    """Redis did not take the work; nothing was queued or sent. Retry later."""


class QueueUnavailable(Unavailable):
    """Redis did not accept the task; nothing was queued."""


class QueueFull(QueueUnavailable):
    """The queue is at its configured maximum length."""


class DeliveryUncertain(QueueUnavailable):
    """Redis did not answer in time: the work may have been queued or not.

    A frozen server (SIGSTOP, CLIENT PAUSE, a slow command) still runs a
    request it received once it resumes, after the client gave up on it. So a
    producer must not treat a timeout as "nothing was queued": the backend
    keeps the row, and the sweeper delivers it if the push really was lost.
    """


class ChannelUnavailable(Unavailable):
    """Redis did not take a broadcast; nothing was published or recorded."""


class MessageTooLarge(ValueError):
    """The message is over MQ_MAX_MESSAGE_BYTES (see envelope.oversized);
    nothing was written or sent. Unlike Unavailable, retrying cannot help."""


class ArgumentsNotStorable(ValueError):
    """A task's arguments hold what no database stores; nothing was enqueued."""


class RedisNotConfigured(ImproperlyConfigured, RedisError):
    """MQ_REDIS_URL is empty. Also a RedisError, so that pages and /healthz
    report Redis as unavailable instead of failing with a 500."""


class ConnectionDead(RedisError):
    """A channel subscription's connection stopped answering within the bound."""


class DatabaseGaveUp(Exception):
    """The database stayed down and the caller asked to stop meanwhile."""


class TaskAlreadyFinished(ValueError):
    """A cancel asked of a task that has finished already; nothing changed."""
