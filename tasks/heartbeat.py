"""The worker's second thread: its lease, its presence, its word to systemd.

The main thread may spend minutes inside one task; the lease must not expire
meanwhile, or another worker would run the task a second time. So a thread
renews it. That thread vouches to the systemd watchdog only for a task still
inside its time limit: a main loop stuck anywhere else stops the pings.
"""

import logging
import os
import socket
import threading
import time

from django.db import DatabaseError, connections
from redis.exceptions import RedisError

from . import presence
from .conf import mq_settings

logger = logging.getLogger(__name__)

# How often the thread looks at the worker; heartbeats are rarer (lease / 3).
TICK_SECONDS = 0.25
# How often SQLite's write-ahead log is checkpointed (see Recorder.checkpoint).
CHECKPOINT_SECONDS = 1.0
# Grace past a task's time limit before the watchdog is left to fire.
LIMIT_GRACE_SECONDS = 5


class Heartbeat:
    def __init__(self, worker):
        self.worker = worker
        self._exit = threading.Event()
        self._thread = None
        self._told_stopping = False
        self._stopping_lock = threading.Lock()

    def beat(self):
        """Renew the worker's leases and presence (one round trip each)."""
        worker = self.worker
        for queue in worker.queues:
            queue.register(worker.worker_id, mq_settings.MQ_LEASE_SECONDS)
        current = worker.current
        info = {
            "queues": worker.queue_names,
            "processed": worker.processed,
            "failed": worker.failed,
            "current": current[0].task if current else None,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        presence.announce(worker.client, "worker", worker.worker_id, info, mq_settings.MQ_LEASE_SECONDS * 3)

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
        self.worker.notifier.stopping()

    def _run(self):
        try:
            self._loop()
        finally:
            connections.close_all()  # this thread's own database connection

    def _loop(self):
        worker = self.worker
        interval = mq_settings.MQ_LEASE_SECONDS / 3
        next_beat = time.monotonic() + interval
        next_checkpoint = time.monotonic() + CHECKPOINT_SECONDS
        while not self._exit.wait(TICK_SECONDS):
            if time.monotonic() >= next_checkpoint:
                next_checkpoint = time.monotonic() + CHECKPOINT_SECONDS
                try:
                    worker.recorder.checkpoint()
                except DatabaseError:
                    pass  # the main loop reports database outages
            if worker.stopping:
                # Now, not when the running task ends: systemd is told at once.
                self.tell_stopping()
            current = worker.current
            if current is not None:
                limit = worker.time_limit_of(current[0].task)
                if limit is None or time.monotonic() - current[1] < limit + LIMIT_GRACE_SECONDS:
                    worker.notifier.watchdog()
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + interval
                try:
                    self.beat()
                    worker.notifier.status(worker.status_text())
                except RedisError:
                    pass  # the main loop reports Redis outages
