"""Log lines that tools can parse: logfmt, and the running task on each.

Every line is ``time=... level=... logger=... <fields>``. mqsite logs with
messages like ``"event=task_done task_id=%s error=%r"``: the formatter quotes
the value put after ``key=`` when it needs it (spaces, quotes, ``=``, empty),
so ``error="Connection refused"`` stays one field. A message that is not
``key=value`` text (a task's own ``logger.info("Processing %s", x)``, a
library's) becomes one quoted ``msg=`` field. Fields given with ``extra=``
follow, then ``task_id`` and ``task`` while a task runs.

The worker sets the running task around each run (``task_context``);
``TaskContextFilter`` on the handler adds it to every record logged
meanwhile, by mqsite or by the task's own loggers, whichever logger.
"""

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache

running_task: ContextVar[tuple[str, str] | None] = ContextVar("running_task", default=None)

# Characters that would end or split a bare value.
NEEDS_QUOTES = re.compile(r'[\s"=\\]')
# One %-conversion of a message template (as logging's msg % args reads it).
CONVERSION = re.compile(r"%(?:\(\w+\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?([diouxXeEfFgGcrsa%])")
# The attributes every LogRecord has; anything else on a record came from extra=.
_PLAIN_RECORD = vars(logging.LogRecord("", 0, "", 0, "", (), None))
PLAIN_RECORD_SIZE = len(_PLAIN_RECORD)
TASK_FIELDS = ("task_id", "task")
# Attributes that are not extra= fields: every record's own, those formatters
# add, and the task fields, which the filter adds and the line ends with.
# runserver's access lines carry the socket and its own clock as extras:
# noise, as the message already says what was asked and answered.
NOT_EXTRA = frozenset(_PLAIN_RECORD) | {"message", "asctime", "request", "server_time"} | set(TASK_FIELDS)


@contextmanager
def task_context(task_id: str, task: str) -> Iterator[None]:
    token = running_task.set((task_id, task))
    try:
        yield
    finally:
        running_task.reset(token)


def quote(value: object) -> str:
    """``value`` as a logfmt value: bare when it can be, else double-quoted."""
    text = value if isinstance(value, str) else str(value)
    if text and not NEEDS_QUOTES.search(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@lru_cache(maxsize=512)
def quoting_template(template: str) -> tuple[str, tuple[int, ...]]:
    """``template`` with each ``key=%r`` made ``key=%s``, and which positional
    arguments follow ``key=`` as %s or %r: those are quoted as logfmt values
    (``error=%r`` meant "show me where it ends"; logfmt quoting says that)."""
    positions = []
    pieces = []
    index, copied = 0, 0
    for match in CONVERSION.finditer(template):
        kind = match.group(1)
        if kind == "%":
            continue
        if kind in "sr" and template[match.start() - 1 : match.start()] == "=":
            positions.append(index)
            pieces += [template[copied : match.start()], "%s"]
            copied = match.end()
        index += 1
    pieces.append(template[copied:])
    return "".join(pieces), tuple(positions)


def is_logfmt_template(template: object) -> bool:
    # mqsite's own lines start with their event name; anything else is prose.
    return isinstance(template, str) and template.startswith("event=")


class TaskContextFilter(logging.Filter):
    """Adds ``task_id`` and ``task`` of the running task to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = running_task.get()
        if current is not None and not hasattr(record, "task_id"):
            record.task_id, record.task = current
        return True


class LogfmtFormatter(logging.Formatter):
    _second = -1
    _second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        head = f"time={self.timestamp(record)} level={record.levelname} logger={quote(record.name)}"
        line = f"{head} {self.fields(record)}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line

    def timestamp(self, record: logging.LogRecord) -> str:
        # strftime costs a visible share of a line; a busy worker logs many
        # lines within the same second.
        second = int(record.created)
        if second != self._second:
            self._second, self._second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int(record.msecs):03d}Z"

    def fields(self, record: logging.LogRecord) -> str:
        template = record.msg
        if is_logfmt_template(template):
            text = self.fill(template, record.args)
        else:
            text = "msg=" + quote(record.getMessage())
        # This runs for each task_done line, on the worker's hot path: a plain
        # record has exactly the standard attributes, so no set is built.
        attributes = vars(record)
        added = attributes.keys() - NOT_EXTRA if len(attributes) != PLAIN_RECORD_SIZE else ()
        extras = [f"{key}={quote(attributes[key])}" for key in sorted(added)]
        if hasattr(record, "task_id") and "task_id=" not in text:
            extras += [f"task_id={quote(record.task_id)}", f"task={quote(getattr(record, 'task', ''))}"]
        return " ".join([text, *extras]) if extras else text

    def fill(self, template: str, args: object) -> str:
        if not args or not isinstance(args, tuple):
            return template % args if args else template
        template, positions = quoting_template(template)
        if not positions:
            return template % args
        values = list(args)
        for i in positions:
            values[i] = quote(values[i])
        return template % tuple(values)
