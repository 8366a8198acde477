"""The outcome of one batch, as the worker hands it back to Redis.

Counters for /metrics travel with the acknowledgement, in the same round
trip: outcomes, and task durations as histogram buckets.
"""

import random
from bisect import bisect_left

from tasks.conf import mq_settings

DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, float("inf"))


class Ack:
    """What one batch hands back to Redis and the database."""

    def __init__(self):
        self.done, self.finished_ids, self.retries, self.dead = [], [], [], []
        self.successes, self.failures = [], []
        self.stats = {}

    def count(self, verdict, duration):
        bucket = DURATION_BUCKETS[bisect_left(DURATION_BUCKETS, duration)]
        for name, amount in ((f"outcome:{verdict}", 1), (f"duration_bucket:{bucket}", 1), ("duration_sum", duration)):
            self.stats[name] = self.stats.get(name, 0) + amount


def retry_delay(attempt):
    """Exponential backoff with jitter: half fixed, half random."""
    # The exponent is capped: past ~1024 attempts 2 ** n no longer converts to
    # a float, and the OverflowError would end the worker.
    base = min(mq_settings.MQ_RETRY_MAX_SECONDS, mq_settings.MQ_RETRY_BASE_SECONDS * 2 ** min(attempt - 1, 64))
    return base / 2 + random.uniform(0, base / 2)
