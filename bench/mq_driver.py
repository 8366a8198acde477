"""The mqsite side of the benchmark, run by bench/run.py in a fresh process
per step with the environment of one configuration (REDIS_URL, DATABASE_URL).

usage: mq_driver.py reset | enqueue --n N [--bulk CHUNK] | count | latency [...]
Prints one JSON object on stdout.
"""

import argparse
import json
import math
import os
import sys
import time

# run.py may point at another source tree (a scratch copy with a proposed change).
ROOT = os.environ.get("MQ_BENCH_TREE") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mqsite.settings")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.db.models import Max, Min  # noqa: E402

from tasks.models import TaskRecord, TaskStatus  # noqa: E402
from tasks.tasks import noop, stamp  # noqa: E402


def pct(xs, p):
    """Nearest-rank percentile, as the peers' harness computes it."""
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def slots(n, spacing=0.0):
    """0..n-1, item i no earlier than t0 + i * spacing (the peers' pacing)."""
    t0 = time.perf_counter()
    for i in range(n):
        if spacing:
            delay = t0 + i * spacing - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        yield i


def reset(_args):
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE {TaskRecord._meta.db_table}")
        else:
            cursor.execute(f"DELETE FROM {TaskRecord._meta.db_table}")
    return {}


def enqueue(args):
    if args.bulk:
        backend = noop.get_backend()
        calls = [([], {})] * args.bulk
        start = time.perf_counter()
        for offset in range(0, args.n, args.bulk):
            backend.enqueue_many(noop, calls[: min(args.bulk, args.n - offset)])
    else:
        start = time.perf_counter()
        for _ in range(args.n):
            noop.enqueue()
    return {"seconds": time.perf_counter() - start}


def count(_args):
    rows = TaskRecord.objects.values("status").order_by()
    by_status = {}
    for row in rows.values_list("status", flat=True):
        by_status[row] = by_status.get(row, 0) + 1
    span = TaskRecord.objects.aggregate(first=Min("started_at"), last=Max("finished_at"))
    seconds = (span["last"] - span["first"]).total_seconds() if span["first"] and span["last"] else None
    return {"statuses": by_status, "db_span_s": seconds}


def wait_done(ids, timeout):
    deadline = time.perf_counter() + timeout
    while TaskRecord.objects.filter(id__in=ids, status=TaskStatus.SUCCESSFUL).count() < len(ids):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{len(ids)} stamp tasks not all done within {timeout}s")
        time.sleep(0.01)


def latency(args):
    """5 warm-up jobs, 1 s idle, then paced stamp jobs; stamp's result is the delay."""
    wait_done([stamp.enqueue(time.time()).id for _ in range(5)], 60)
    out = {}
    for tag, n, spacing in (("lat", args.lat_n, args.spacing), ("light", args.light_n, args.light_spacing)):
        if not n:
            continue
        time.sleep(1.0)
        start = time.perf_counter()
        ids = [stamp.enqueue(time.time()).id for _ in slots(n, spacing)]
        offered = n / (time.perf_counter() - start)
        wait_done(ids, 120)
        results = list(TaskRecord.objects.filter(id__in=ids, status=TaskStatus.SUCCESSFUL).values_list("result", flat=True))
        assert len(results) == n, "latency tasks lost"
        ms = [seconds * 1000 for seconds in results]
        out.update({f"{tag}_p50_ms": pct(ms, 50), f"{tag}_p99_ms": pct(ms, 99), f"{tag}_max_ms": max(ms), f"{tag}_offered_rate": offered})
    return out


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("reset")
    p = sub.add_parser("enqueue")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--bulk", type=int, default=0, help="enqueue_many with chunks of this size")
    sub.add_parser("count")
    p = sub.add_parser("latency")
    p.add_argument("--lat-n", type=int, default=500)
    p.add_argument("--spacing", type=float, default=0.002)
    p.add_argument("--light-n", type=int, default=100)
    p.add_argument("--light-spacing", type=float, default=0.05)
    args = parser.parse_args()
    result = {"reset": reset, "enqueue": enqueue, "count": count, "latency": latency}[args.step](args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
