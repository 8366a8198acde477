"""The worker's second thread: its lease, its presence, its word to systemd.

The main thread may spend minutes inside one task; the lease must not expire
meanwhile, or another worker would run the task a second time. So a thread
renews it. That thread vouches to the systemd watchdog only for a task still
inside its time limit: a main loop stuck anywhere else stops the pings.

The lease still lapses when the whole process stalls (SIGSTOP, a paused VM)
or when a task holds the GIL in one long C call, which no Python thread can
interrupt. Other workers then take its tasks back. So the thread also keeps
``held_until``: until then the lease is known to have been held without a
break since the tasks in hand were taken, and the worker runs them without
asking Redis (BatchExecutor._owns). A renewal only extends a lease that is still
there; a lease that had lapsed is taken anew in a new ``epoch``, and tasks
taken in an earlier one are checked with Redis one by one before they run.
"""

import logging
import os
import socket
import threading
import time
from functools import partial
from typing import NamedTuple

from django.db import connections
from redis.exceptions import RedisError

from tasks.queue import presence
from tasks.conf import mq_settings

logger = logging.getLogger(__name__)

# How often the thread looks at the worker; heartbeats are rarer (lease / 3).
TICK_SECONDS = 0.25
# Grace past a task's time limit before the watchdog is left to fire.
LIMIT_GRACE_SECONDS = 5
# The share of a lease not trusted: room for clock drift and rounding.
LEASE_MARGIN = 0.1

# The lease clock counts a suspended machine's sleep, as Redis's expiry does
# (time.monotonic does not).
lease_clock = partial(time.clock_gettime, time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic


class Snapshot(NamedTuple):
    """What the heartbeat announces about its worker, and what its watchdog
    needs: read in one go from the worker's state."""

    stopping: bool
    processed: int
    failed: int
    task: str | None  # the task running now
    running_since: float | None  # its time.monotonic() start
    time_limit: float | None  # the limit it runs under (None: unlimited)
    busy: int = 0  # slots running a task or waiting for its record
    slots: int = 1  # --concurrency

    def status_text(self):
        return f"processed={self.processed} failed={self.failed} current={self.task or '-'} busy={self.busy}/{self.slots}"


class Heartbeat:
    """Leases and presence of one worker on its queues.

    ``snapshot`` returns the worker's Snapshot; ``on_tick`` (optional) is
    called on every tick of the thread, for housekeeping that must not wait
    for the main loop (the recorder's WAL checkpoint).
    """

    def __init__(self, worker_id, queues, notifier, snapshot, on_tick=None):
        self.worker_id = worker_id
        self.queues = queues
        self.client = queues[0].client
        self.notifier = notifier
        self.snapshot = snapshot
        self.on_tick = on_tick
        self._exit = threading.Event()
        self._thread = None
        self._told_stopping = False
        self._stopping_lock = threading.Lock()
        self.held_until = 0.0  # lease_clock() time
        self.epoch = 0  # odd while a lapsed lease is being taken anew

    def holds(self, epoch):
        """Whether the lease was held without a break since ``epoch`` began,
        and is held now. Free: no round trip (the worker asks per task)."""
        # held_until before epoch: beat() writes them in the other order.
        return lease_clock() < self.held_until and self.epoch == epoch

    def held(self, sent):
        """The lease was (re)set by a command sent at lease_clock() ``sent``."""
        self.held_until = sent + mq_settings.MQ_LEASE_SECONDS * (1 - LEASE_MARGIN)

    def beat(self, first=False):
        """Renew the worker's leases and presence (one round trip each)."""
        lease = mq_settings.MQ_LEASE_SECONDS
        sent = lease_clock()
        if all([queue.register(self.worker_id, lease, renew_only=not first) for queue in self.queues]):
            self.held(sent)
        else:
            # Lapsed: the process stalled, or Redis lost its data. Other workers
            # may have taken back the tasks in hand; the worker checks them.
            logger.warning("event=lease_lapsed worker=%s", self.worker_id)
            self.epoch += 1
            try:
                sent = lease_clock()
                for queue in self.queues:
                    queue.register(self.worker_id, lease)
                self.held(sent)
            finally:
                self.epoch += 1
        snapshot = self.snapshot()
        info = {
            "queues": [queue.name for queue in self.queues],
            "processed": snapshot.processed,
            "failed": snapshot.failed,
            "current": snapshot.task,
            "busy": snapshot.busy,
            "slots": snapshot.slots,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        presence.announce(self.client, "worker", self.worker_id, info, mq_settings.MQ_LEASE_SECONDS * 3)

    def start(self):
        self._thread = threading.Thread(target=self._run, name="mq-heartbeat", daemon=True)
        self._thread.start()

    def stop(self):
        self._exit.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def tell_stopping(self):
        """STOPPING=1 once, from whichever thread notices first."""
        with self._stopping_lock:
            if self._told_stopping:
                return
            self._told_stopping = True
        self.notifier.stopping()

    def _run(self):
        try:
            self._loop()
        finally:
            connections.close_all()  # this thread's own database connection

    def _loop(self):
        interval = mq_settings.MQ_LEASE_SECONDS / 3
        next_beat = time.monotonic() + interval
        while not self._exit.wait(TICK_SECONDS):
            if self.on_tick is not None:
                self.on_tick()
            snapshot = self.snapshot()
            if snapshot.stopping:
                # Now, not when the running task ends: systemd is told at once.
                self.tell_stopping()
            if snapshot.task is not None:
                limit = snapshot.time_limit
                if limit is None or time.monotonic() - snapshot.running_since < limit + LIMIT_GRACE_SECONDS:
                    self.notifier.watchdog()
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + interval
                try:
                    self.beat()
                    self.notifier.status(self.snapshot().status_text())
                except RedisError:
                    pass  # the main loop reports Redis outages
