"""Records and acknowledges a finished batch while the next one runs.

On PostgreSQL a deep queue's drain spent two fifths of its time waiting for
the database, half of it for the UPDATE that records a batch's outcomes. That
statement needs nothing from the batch after it, so the serial worker hands
it, with the batch's acknowledgement, to one thread with a database
connection of its own, and goes on to take, claim and run the next batch.

What still holds:

- An item leaves the processing list only after its outcome is committed:
  the thread records, then acknowledges, in that order, as the worker did.
- At most one batch is behind. The worker waits for it before it hands over
  the next, before it gives items back (an outage, a stop), and before it
  claims a batch that holds one of its ids again (a redelivery): the claim
  would otherwise find that row still RUNNING and run the task a second time.
- A kill while a batch is behind loses what a kill mid-batch always lost: the
  runs of the batch in hand, not yet recorded, run again (at least once). The
  batch behind is either recorded, and its items come back as duplicates that
  are acknowledged unrun, or not, and it runs again.
- The operator's second signal ends the worker even while it waits for a
  stuck record (a database outage); it then gives back nothing, since the
  record might still commit after another worker claimed the items: they
  return when its lease expires.
- An error of the thread's (Redis refusing the acknowledgement) is raised in
  the worker's loop at its next wait, where every Redis error is handled,
  once the batch that ran meanwhile is handed over to be recorded.

Only on PostgreSQL, and only for batches of more than one item: SQLite has a
single writer, so its claim would wait for the record anyway, and a batch of
one comes from the blocking take of a shallow queue, where the next item is
not there yet and the hand-over would only add to the latency.
"""

import threading
import time
from concurrent.futures import Future
from queue import SimpleQueue

from django.db import close_old_connections, connections

# As BatchExecutor.begin_batch: how often the thread lets Django drop its
# connection when past CONN_MAX_AGE or broken.
CONNECTION_CHECK_SECONDS = 1.0


class RecordBehind:
    """One thread that runs ``record(*args)`` calls one at a time, and the
    ids of the one in flight."""

    def __init__(self, name="mq-record-behind"):
        self._calls: SimpleQueue = SimpleQueue()
        self._pending: Future | None = None
        self._pending_ids: frozenset = frozenset()
        self._connections_checked = float("-inf")
        # A daemon: a worker that ends abruptly (the operator's second signal)
        # must not hang in the interpreter's exit waiting for a record; what
        # it had not acknowledged comes back through recovery.
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, ids, record, *args):
        """Wait for the call in flight, then start ``record(*args)``, which
        settles the tasks ``ids``; then raise the error of the call before,
        if it had one.

        The new call starts even then: it records runs that have happened.
        Left unrecorded while the worker handles the error (Redis refused
        the previous acknowledgement: the worker gives its items back), they
        would run a second time.
        """
        try:
            self.wait()
        finally:
            future: Future = Future()
            self._pending, self._pending_ids = future, frozenset(ids)
            self._calls.put((future, record, args))

    def wait(self, ids=None):
        """Block until the call in flight is done, and raise its error. With
        ``ids``: only if the call in flight settles one of them."""
        future = self._pending
        if future is None or (ids is not None and self._pending_ids.isdisjoint(ids)):
            return
        self._pending, self._pending_ids = None, frozenset()
        future.result()

    @property
    def busy(self):
        """Whether a call may still be writing: handed over and not finished."""
        return self._pending is not None and not self._pending.done()

    def close(self):
        """Wait for the call in flight, then end the thread and close its
        database connections.

        Interrupted while it waits (the operator's second signal, ForcedStop)
        it leaves the thread alone: a record stuck on a database outage must
        not hold the exit. The daemon thread ends with the process; what it
        had not committed is rolled back with its connection.
        """
        error = None
        try:
            self.wait()
        except Exception as exc:  # the call is over, and failed: the thread is free
            error = exc
        self._calls.put(None)
        self._thread.join()
        if error is not None:
            raise error

    def _serve(self):
        while (call := self._calls.get()) is not None:
            future, record, args = call
            try:
                self._check_connections()
                future.set_result(record(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the worker's loop
                future.set_exception(exc)
        connections.close_all()

    def _check_connections(self):
        now = time.monotonic()
        if now - self._connections_checked >= CONNECTION_CHECK_SECONDS:
            close_old_connections()
            self._connections_checked = now
