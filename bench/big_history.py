#!/usr/bin/env python3
"""The history at a million rows on PostgreSQL: admin pages, the API's list,
prune_history, and prune while workers drain (see bench/README.md).

usage: big_history.py [--rows N] [--pg-url URL] [--keep] [--drain N] [--workers W]

Fills a scratch database with INSERT ... SELECT FROM generate_series (rows
over the last 60 days, 90 % SUCCESSFUL, FAILED, DEAD, READY, RUNNING), then
times each admin page as a logged-in superuser (median of 5), the API's
first and a deep page, and prune_history. Last, W real workers drain N
no-op tasks twice, once alone and once while prune_history deletes the older
half of the table, and the longest gap between two tasks finished by one
worker is reported for each: a prune that held a lock a worker waits on
would show there.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import pg_admin, recreate_pg, spawn, stop  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

PYTHON = sys.executable
DEFAULT_PG = "postgres://postgres@127.0.0.1:5432/mqsite_big_history"
DEFAULT_EMPTY_PG = "postgres://postgres@127.0.0.1:5432/mqsite_empty_history"
TOKEN = "bench-token-not-secret"

FILL = """
INSERT INTO tasks_taskrecord (id, task_path, queue, backend, args, kwargs, status, attempts, worker,
                              enqueued_at, run_after, started_at, finished_at, result, error, errors, priority)
SELECT 'big-' || lpad(i::text, 9, '0'),
       (ARRAY['tasks.tasks.noop', 'tasks.tasks.add', 'tasks.tasks.cook_dish', 'reports.tasks.build'])[1 + i %% 4],
       (ARRAY['default', 'default', 'default', 'mail', 'reports'])[1 + i %% 5],
       'default', '[1, 2]'::jsonb, '{}'::jsonb,
       s.status,
       CASE WHEN s.status = 'READY' THEN 0 ELSE 1 END,
       CASE WHEN s.status = 'READY' THEN '' ELSE 'host-' || (i %% 8) END,
       at, NULL,
       CASE WHEN s.status = 'READY' THEN NULL ELSE at + interval '10 ms' END,
       CASE WHEN s.status IN ('READY', 'RUNNING') THEN NULL ELSE at + interval '50 ms' END,
       CASE WHEN s.status = 'SUCCESSFUL' THEN to_jsonb(i) END,
       CASE WHEN s.status IN ('FAILED', 'DEAD') THEN 'ValueError: bad input ' || i || E'\\nTraceback ...' ELSE '' END,
       '[]'::jsonb,
       CASE WHEN i %% 50 = 0 THEN 10 ELSE 0 END
FROM generate_series(1, %(rows)s) AS i,
     LATERAL (SELECT now() - (%(rows)s - i) * (interval '60 days' / %(rows)s) AS at) AS t,
     LATERAL (SELECT CASE WHEN i %% 100 < 90 THEN 'SUCCESSFUL' WHEN i %% 100 < 96 THEN 'FAILED'
                          WHEN i %% 100 < 97 THEN 'DEAD' WHEN i %% 100 < 99 THEN 'READY'
                          ELSE 'RUNNING' END AS status) AS s
"""


def log(message):
    print(message, file=sys.stderr, flush=True)


def timed(fn, repeat=5):
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--pg-url", default=DEFAULT_PG)
    parser.add_argument("--keep", action="store_true", help="Keep the filled database (and reuse it if it exists).")
    parser.add_argument("--drain", type=int, default=60_000, help="Tasks each drain run processes.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--sections", default="pages,status,rates,prune",
        help="Comma separated, in this order: pages (admin and API), status (queue_status), rates (enqueue and drain "
        "against an empty table, same run), prune (prune_history while workers drain; deletes half the table).",
    )
    parser.add_argument("--empty-pg-url", default=DEFAULT_EMPTY_PG, help="The empty database the rates are compared with.")
    parser.add_argument("--rate-n", type=int, default=3000, help="Tasks enqueued one at a time per round (rates).")
    parser.add_argument("--bulk-n", type=int, default=20000, help="Tasks enqueued in bulk, then drained, per round (rates).")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds of the rates; medians are reported.")
    opts = parser.parse_args()
    sections = opts.sections.split(",")

    workdir = Path(tempfile.mkdtemp(prefix="big-history-"))
    redis = RedisServer(workdir / "redis")
    redis.start()
    env = dict(
        os.environ,
        DATABASE_URL=opts.pg_url,
        REDIS_URL=redis.url,
        MQ_VAR_DIR=str(workdir),
        DJANGO_DEBUG="0",
        DJANGO_SECURE_SSL_REDIRECT="0",
        DJANGO_ALLOWED_HOSTS="testserver,127.0.0.1",
        DJANGO_SECRET_KEY="bench-" + "x" * 50,
        MQ_API_TOKENS=f"bench:{TOKEN}",
        DJANGO_SETTINGS_MODULE="mqsite.settings",
    )
    # This process renders admin pages: DEBUG on, for the static files'
    # plain storage (no collectstatic manifest); the workers run with it off.
    os.environ.update(env, DJANGO_DEBUG="1")
    fresh = not (opts.keep and database_exists(opts.pg_url))
    if fresh:
        recreate_pg(opts.pg_url)
        subprocess.run([PYTHON, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    import django

    django.setup()
    try:
        if fresh:
            fill(opts.rows)
        if "pages" in sections:
            pages()
        if "status" in sections:
            queue_status()
        if "rates" in sections:
            from bench.history_rates import compare_rates

            compare_rates(opts, redis, workdir)
        if "prune" in sections:
            prune_under_load(opts, env, workdir)
    finally:
        redis.stop()


def database_exists(url):
    try:
        admin, name = pg_admin(url)
    except Exception:
        return False
    with admin:
        return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def fill(rows):
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(FILL, {"rows": rows})
        cursor.execute("VACUUM ANALYZE tasks_taskrecord")
    log(f"filled {rows} rows in {time.perf_counter() - started:.1f} s")


def pages():
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    user = User.objects.filter(username="bench").first() or User.objects.create_superuser("bench", "b@example.com", "x")
    browser = Client()
    browser.force_login(user)
    base = "/admin/tasks/taskrecord/"
    api = Client(HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    deep_cursor = api.get("/api/tasks?limit=200").json()["next"]
    checks = [
        ("admin changelist", base),
        ("admin page 50", base + "?p=50"),
        ("admin status=FAILED", base + "?status__exact=FAILED"),
        ("admin status=DEAD", base + "?status__exact=DEAD"),
        ("admin queue=mail", base + "?queue__exact=mail"),
        ("admin task=add", base + "?task_path__exact=tasks.tasks.add"),
        ("admin status+queue", base + "?status__exact=READY&queue__exact=reports"),
        ("admin status=READY", base + "?status__exact=READY"),
        ("admin priority above 0", base + "?priority=above"),
        ("admin still delayed", base + "?delayed=later"),
        ("admin search id", base + "?q=big-000050000"),
        ("admin search id prefix", base + "?q=big-0000500"),
        ("admin search task path", base + "?q=reports.tasks.build"),
        ("admin search text", base + "?q=bad+input+999999"),
        ("admin search text, FAILED", base + "?q=bad+input+999999&status__exact=FAILED"),
        ("admin search no match", base + "?q=no-such-thing"),
        ("admin past 7 days", base + "?enqueued=week"),
        ("admin older than 30 days, FAILED", base + "?enqueued=older&status__exact=FAILED"),
        ("admin one task", base + "big-000050000/change/"),
        ("api list", "/api/tasks"),
        ("api next page", deep_cursor),
        ("api status=DEAD", "/api/tasks?status=DEAD&limit=200"),
        ("api queue+task", "/api/tasks?queue=mail&task=tasks.tasks.add"),
    ]
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| page | median ms | max ms | SQL median ms | queries |\n|---|---:|---:|---:|---:|")
    for name, url in checks:
        client = api if url.startswith(("/api", "http")) else browser
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        sql_ms, queries = [], 0

        def load():
            nonlocal queries
            with CaptureQueriesContext(connection) as captured:
                client.get(url)
            sql_ms.append(sum(float(q["time"]) for q in captured.captured_queries) * 1000)
            queries = len(captured.captured_queries)

        median, worst = timed(load)
        print(f"| {name} | {median:.0f} | {worst:.0f} | {statistics.median(sql_ms):.0f} | {queries} |", flush=True)


def queue_status():
    """queue_status --json in this process (no interpreter start-up), and the
    history counts it reads, median of 5."""
    import io

    from django.core.management import call_command

    from tasks.web.status import history_counts

    median, worst = timed(lambda: call_command("queue_status", "--json", stdout=io.StringIO()))
    print(f"\n| queue_status --json | {median:.0f} | {worst:.0f} |")
    median, worst = timed(history_counts)
    print(f"| its history counts | {median:.0f} | {worst:.0f} |", flush=True)


def finished_gaps(drained):
    """The longest gap, in ms, between two tasks one worker finished in a row."""
    worst = 0.0
    rows = drained.order_by("worker", "finished_at")
    previous = None
    for worker, finished in rows.values_list("worker", "finished_at").iterator(chunk_size=5000):
        if previous and previous[0] == worker:
            worst = max(worst, (finished - previous[1]).total_seconds() * 1000)
        previous = (worker, finished)
    return worst


def drain(opts, env, workdir, label, during=None):
    """Enqueue opts.drain no-ops, run the workers until done; (seconds, longest gap ms, during's result)."""
    from django.utils import timezone

    from tasks.models import TaskRecord, TaskStatus
    from tasks.tasks import noop

    backend = noop.get_backend()
    # The filled rows' READY and RUNNING ones are in no Redis list: the
    # workers' sweeper resends them, and they run too. Only this drain's count.
    since = timezone.now()
    for _ in range(0, opts.drain, 1000):
        backend.enqueue_many(noop, [((), {})] * 1000)
    prefix = f"drain-{label}-"
    started = time.perf_counter()
    workers = [
        spawn([PYTHON, "manage.py", "listen_queue", "--burst", "-v", "0", "--worker-id", f"{prefix}{n}"], env, workdir / f"{prefix}{n}.log", ROOT)
        for n in range(opts.workers)
    ]
    outcome = {}
    if during:
        runner = threading.Thread(target=lambda: outcome.update(result=during()))
        time.sleep(1.0)  # the workers are draining
        runner.start()
    for worker in workers:
        worker.wait(timeout=1200)
    seconds = time.perf_counter() - started
    if during:
        runner.join()
    drained = TaskRecord.objects.filter(enqueued_at__gte=since, task_path=noop.module_path)
    done = drained.filter(status=TaskStatus.SUCCESSFUL).count()
    assert done == opts.drain, f"{label}: {done} of {opts.drain} tasks SUCCESSFUL"
    for worker in workers:
        stop(worker)
    return seconds, finished_gaps(drained), outcome.get("result")


def prune_under_load(opts, env, workdir):
    from tasks.models import TaskRecord

    before = TaskRecord.objects.count()
    seconds, gap, _ = drain(opts, env, workdir, "alone")
    print(f"\ndrain alone: {opts.drain} tasks, {opts.workers} workers, {seconds:.1f} s, longest gap between two tasks of a worker {gap:.0f} ms")

    def prune():
        started = time.perf_counter()
        out = subprocess.run(
            [PYTHON, "manage.py", "prune_history", "--older-than", "30"], cwd=ROOT, env=env, check=True, capture_output=True, text=True
        ).stdout
        return time.perf_counter() - started, out

    seconds, gap, (prune_seconds, out) = drain(opts, env, workdir, "pruning", during=prune)
    deleted = sum(int(line.rsplit(" ", 1)[1]) for line in out.splitlines())
    print(f"drain while pruning: {seconds:.1f} s, longest gap between two tasks of a worker {gap:.0f} ms")
    print(f"prune_history: {deleted} rows in {prune_seconds:.1f} s = {deleted / prune_seconds:.0f} rows/s ({before} rows before)")
    print(out.strip())


if __name__ == "__main__":
    main()
