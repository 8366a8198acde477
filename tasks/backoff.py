"""How long to wait before trying again: capped exponential backoff.

One formula for every retry in mqsite: a task's next attempt, a worker
waiting out Redis or the database, a listener resubscribing. Each caller
keeps its own count of failures in a row and its own base and cap.
"""

import random

# Past ~1024 doublings 2 ** n no longer converts to a float, and the
# OverflowError would end the process that was only meant to wait; long
# before that every delay has reached its cap.
MAX_DOUBLINGS = 64


def backoff_delay(failures, base, cap, jitter=False):
    """Seconds to wait after ``failures`` failures in a row (0 for the first wait).

    ``base`` doubles with each failure up to ``cap``. With ``jitter`` the wait
    is drawn from the upper half of that, so processes that failed together
    (a Redis restart seen by every worker) do not all come back in the same
    instant, and none comes back sooner than half the nominal delay.
    """
    delay = min(cap, base * 2 ** min(failures, MAX_DOUBLINGS))
    if jitter:
        return random.uniform(delay / 2, delay)
    return delay
