"""Enqueue and drain rates with a big history table against an empty one, in
the same run (bench/big_history.py --sections rates; see bench/README.md).

Each round measures both databases, in turns: N no-op tasks enqueued one at
a time through the Tasks API, M in bulk (enqueue_many, 1,000 a call), and
one worker process (`listen_queue --burst`) draining those M, timed from the
first task taken until the queue and its processing list are empty (rows are
recorded before items leave it). Medians of the rounds, and the big table's
rate as a share of the empty one's, round by round.

The filled table's READY and RUNNING rows are in no Redis list: the workers'
sweeper would resend 300,000 of them in the middle of the measure. They are
ended CANCELLED first, once: a table that size in production is finished
rows, with a live backlog the size of the empty table's.
"""

import statistics
import time
from pathlib import Path

from bench.run import QUEUE_KEY, MqConfig, recreate_pg, spawn, stop, wait_for

BENCH_ROWS = "id NOT LIKE 'big-%%'"  # the filled rows' ids start with "big-"


def log(message):
    import sys

    print(message, file=sys.stderr, flush=True)


def sql(url, statement, params=()):
    import psycopg

    with psycopg.connect(url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else None


def close_filled_backlog(url):
    ended = sql(
        url,
        "UPDATE tasks_taskrecord SET status = 'CANCELLED', finished_at = enqueued_at + interval '1 s' "
        "WHERE status IN ('READY', 'RUNNING') AND id LIKE 'big-%%' RETURNING 1",
    )
    if ended:
        log(f"ended {len(ended)} filled READY/RUNNING rows CANCELLED; vacuuming")
        sql(url, "VACUUM ANALYZE tasks_taskrecord")


def forget_bench_rows(url):
    """Delete what earlier rounds enqueued, so both tables keep their size."""
    sql(url, f"DELETE FROM tasks_taskrecord WHERE {BENCH_ROWS}")


def drain(cfg, client, n, logfile):
    worker_id = "bench-rates"
    processing = f"{{{QUEUE_KEY}}}:processing:{worker_id}"
    process = spawn(cfg.manage("listen_queue", "--burst", "-v", "0", "--worker-id", worker_id), cfg.env, logfile, cfg.tree)
    try:
        first = wait_for(lambda: client.llen(QUEUE_KEY) < n, 120, 0.002, process)
        done = wait_for(lambda: client.llen(QUEUE_KEY) == 0 and client.llen(processing) == 0, 1200, 0.01, process)
        process.wait(30)
    finally:
        stop(process)
    succeeded = sql(cfg.db_url, f"SELECT count(*) FROM tasks_taskrecord WHERE status = 'SUCCESSFUL' AND {BENCH_ROWS}")[0][0]
    assert succeeded == n, f"{cfg.name}: {succeeded} of {n} SUCCESSFUL"
    return n / (done - first)


def one_round(cfg, client, opts, logfile):
    client.flushdb()
    forget_bench_rows(cfg.db_url)
    one = opts.rate_n / cfg.driver("enqueue", "--n", str(opts.rate_n))["seconds"]
    client.flushdb()
    forget_bench_rows(cfg.db_url)
    bulk = opts.bulk_n / cfg.driver("enqueue", "--n", str(opts.bulk_n), "--bulk", "1000")["seconds"]
    assert client.llen(QUEUE_KEY) == opts.bulk_n
    return {"enqueue/s": one, "bulk enqueue/s": bulk, "drain/s": drain(cfg, client, opts.bulk_n, logfile)}


def compare_rates(opts, redis, workdir):
    workdir = Path(workdir)
    big = MqConfig("postgres", opts.pg_url, redis.url, workdir, label="big")
    empty = MqConfig("postgres", opts.empty_pg_url, redis.url, workdir, label="empty")
    close_filled_backlog(big.db_url)
    forget_bench_rows(big.db_url)
    recreate_pg(empty.db_url)
    empty.setup()
    rows = sql(big.db_url, "SELECT reltuples::bigint FROM pg_class WHERE relname = 'tasks_taskrecord'")[0][0]
    client = redis.client()
    results = {"big": [], "empty": []}
    try:
        for n in range(opts.rounds):
            order = [("empty", empty), ("big", big)] if n % 2 == 0 else [("big", big), ("empty", empty)]
            for name, cfg in order:
                started = time.perf_counter()
                results[name].append(one_round(cfg, client, opts, workdir / f"rates-{name}-{n}.log"))
                log(f"round {n + 1} {name}: {results[name][-1]} ({time.perf_counter() - started:.0f} s)")
    finally:
        forget_bench_rows(big.db_url)
        empty.teardown()
    print(f"\n| rate ({opts.rounds} rounds, medians) | empty table | {rows:,} rows | big / empty (min..max) |\n|---|---:|---:|---:|")
    for key in ("enqueue/s", "bulk enqueue/s", "drain/s"):
        e = statistics.median(r[key] for r in results["empty"])
        b = statistics.median(r[key] for r in results["big"])
        ratios = [rb[key] / re[key] for rb, re in zip(results["big"], results["empty"])]
        print(f"| {key} | {e:,.0f} | {b:,.0f} | {statistics.median(ratios):.2f} ({min(ratios):.2f}..{max(ratios):.2f}) |", flush=True)
