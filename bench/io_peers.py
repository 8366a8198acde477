"""The peers' side of bench/io.py: one sleeping task per queue library.

Imported by the peer's worker (huey_consumer, dramatiq, celery) and by the
enqueuing process, with IO_PEER naming the library, so that a worker loads
only its own library (its PSS is part of what is measured). Runs in the
peers' venv (var/bench-venv), with PYTHONPATH set to this folder.
"""

import os
import time

URL = f"redis://127.0.0.1:{os.environ['PORT']}/0"
PEER = os.environ["IO_PEER"]
DONE_FILE = os.environ["IO_DONE_FILE"]


def _nap(seconds):
    time.sleep(seconds)
    with open(DONE_FILE, "a") as handle:
        handle.write("1\n")


if PEER == "huey":
    from huey import RedisHuey

    huey = RedisHuey("io", url=URL)
    nap = huey.task()(_nap)

    def send(seconds):
        nap(seconds)

elif PEER == "dramatiq":
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    dramatiq.set_broker(RedisBroker(url=URL))
    nap = dramatiq.actor(_nap)

    def send(seconds):
        nap.send(seconds)

elif PEER == "celery":
    from celery import Celery

    app = Celery("io_peers", broker=URL)
    app.conf.broker_connection_retry_on_startup = True
    nap = app.task(name="io_peers.nap")(_nap)

    def send(seconds):
        nap.delay(seconds)


def send_many(count, seconds):
    """Enqueue from a process that imported this module as io_peers: run as
    __main__, the task names would say __main__, which no worker knows."""
    for _ in range(count):
        send(seconds)
