#!/usr/bin/env python3
"""I/O-bound drain: one worker process, tasks that wait 20 ms, mqsite's
--concurrency against the peers' thread pools, with each worker's memory.

usage: io.py [--n 1000] [--runs 3] [--seconds 0.02] [--peers huey,dramatiq,celery] [--no-serial] [--only TEXT]

Each config drains N tasks that sleep (or, for mqsite's async rows, await
asyncio.sleep) SECONDS each, from a queue filled before the worker starts;
every task appends a line to one file, and the drain is timed from the first
item leaving the queue until N lines are there. PSS is the largest sum, over
the worker's process tree, of Pss in /proc/<pid>/smaps_rollup sampled during
the drain. Configs are interleaved run by run; the table shows medians.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import PYTHON, QUEUE_KEY, VAR, MqConfig, log, peers_python, redis_binary, spawn, stop  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

BENCH = ROOT / "bench"
# (label, listen_queue --concurrency, task)
MQ_CONFIGS = [
    ("mqsite --concurrency 8 (threads)", 8, "bench.io_tasks.nap"),
    ("mqsite --concurrency 8 (async def)", 8, "bench.io_tasks.anap"),
    ("mqsite --concurrency 100 (async def)", 100, "bench.io_tasks.anap"),
]
SERIAL = ("mqsite --concurrency 1 (today's serial worker)", 1, "bench.io_tasks.nap")
# peer -> (label, worker argv in the peers' venv bin, the Redis list its queue is)
PEER_CONFIGS = {
    "huey": ("huey_consumer -k thread -w 8", ["huey_consumer", "io_peers.huey", "-k", "thread", "-w", "8", "-q"],
             "huey.redis.io"),
    "dramatiq": ("dramatiq -p 1 -t 8", ["dramatiq", "io_peers", "-p", "1", "-t", "8"], "dramatiq:default"),
    "celery": ("celery -P threads -c 8", ["celery", "-A", "io_peers", "worker", "-P", "threads", "-c", "8",
                                          "--loglevel", "WARNING"], "celery"),
}


def tree_pss_kib(pid):
    """Pss of a process and all its descendants, in KiB."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def lines_in(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().count(b"\n")
    except FileNotFoundError:
        return 0


def drain(argv, env, cwd, client, queue_key, n, done_file, logfile, timeout):
    """(tasks/s, peak PSS MiB) of one worker draining n pre-queued tasks."""
    process = spawn(argv, env, logfile, cwd)
    peak, t_first, deadline = 0, None, time.perf_counter() + timeout
    try:
        while True:
            if t_first is None and client.llen(queue_key) < n:
                t_first = time.perf_counter()
            if lines_in(done_file) >= n:
                t_done = time.perf_counter()
                break
            if process.poll() is not None:
                raise RuntimeError(f"worker exited early (rc={process.returncode}); see {logfile}")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{lines_in(done_file)} of {n} done after {timeout}s; see {logfile}")
            peak = max(peak, tree_pss_kib(process.pid))
            time.sleep(0.005)
        peak = max(peak, tree_pss_kib(process.pid))
    finally:
        stop(process)
    if lines_in(done_file) != n:
        raise RuntimeError(f"{lines_in(done_file)} tasks ran, {n} were queued")
    return n / (t_done - (t_first or t_done)), peak / 1024


def mq_enqueue(count, task_path, seconds):
    """In a child process with mqsite's environment: enqueue_many in chunks."""
    import django

    django.setup()
    from django.utils.module_loading import import_string

    task = import_string(task_path)
    backend = task.get_backend()
    for offset in range(0, count, 1000):
        backend.enqueue_many(task, [([seconds], {})] * min(1000, count - offset))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="tasks per drain (default 1000)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (default 3)")
    parser.add_argument("--seconds", type=float, default=0.02, help="each task's wait (default 0.02)")
    parser.add_argument("--peers", default="huey,dramatiq,celery", help="comma list, or none")
    parser.add_argument("--no-serial", action="store_true", help="leave out mqsite --concurrency 1 (N x 20 ms)")
    parser.add_argument("--only", help="run only the mqsite configs whose label contains this (e.g. 'async')")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--peers-venv", type=Path, default=VAR.parent / "bench-venv")
    parser.add_argument("--out", type=Path, default=VAR / "io-results.json")
    parser.add_argument("--mq-enqueue", nargs=3, metavar=("N", "TASK", "SECONDS"), help=argparse.SUPPRESS)
    return parser.parse_args()


def main():
    args = parse_args()
    if args.mq_enqueue:
        count, task_path, seconds = args.mq_enqueue
        return mq_enqueue(int(count), task_path, float(seconds))
    peers = [p for p in args.peers.split(",") if p and p != "none"]
    python = peers_python(args.peers_venv, peers) if peers else None
    VAR.mkdir(parents=True, exist_ok=True)
    logdir = Path(tempfile.mkdtemp(prefix="mqsite-io-"))
    done_file = logdir / "done.txt"
    server = RedisServer(logdir, binary=redis_binary(None), require_password=False).start()
    client = server.client()
    mq = MqConfig("sqlite", f"sqlite:///{logdir / 'io.sqlite3'}", server.url, logdir)
    mq.env.update(DJANGO_SETTINGS_MODULE="bench.io_settings", IO_DONE_FILE=str(done_file))
    mq.setup()
    configs = [("mq", *c) for c in MQ_CONFIGS + ([] if args.no_serial else [SERIAL])
               if args.only is None or args.only in c[0]]
    configs += [("peer", name) for name in peers]
    results = {}
    try:
        for run in range(args.runs):
            order = configs[run % len(configs):] + configs[: run % len(configs)]
            for config in order:
                mq.fresh(client)
                done_file.unlink(missing_ok=True)
                if config[0] == "mq":
                    _, label, concurrency, task_path = config
                    subprocess.run([PYTHON, str(BENCH / "io.py"), "--mq-enqueue", str(args.n), task_path,
                                    str(args.seconds)], cwd=ROOT, env=mq.env, check=True)
                    argv = mq.manage("listen_queue", "--burst", "-v", "0", "--concurrency", str(concurrency))
                    rate, pss = drain(argv, mq.env, ROOT, client, QUEUE_KEY, args.n, done_file,
                                      logdir / f"{run}-{concurrency}.log", args.timeout)
                else:
                    label, worker, queue_key = PEER_CONFIGS[config[1]]
                    env = dict(os.environ, PORT=str(server.port), IO_PEER=config[1], IO_DONE_FILE=str(done_file),
                               PYTHONPATH=str(BENCH), PYTHONDONTWRITEBYTECODE="1")
                    subprocess.run([str(python), "-c", f"import io_peers; io_peers.send_many({args.n}, {args.seconds})"],
                                   cwd=BENCH, env=env, check=True)
                    argv = [str(Path(python).parent / worker[0]), *worker[1:]]
                    rate, pss = drain(argv, env, BENCH, client, queue_key, args.n, done_file,
                                      logdir / f"{run}-{config[1]}.log", args.timeout)
                log(f"run {run + 1}: {label}: {rate:,.0f} tasks/s, {pss:.0f} MiB PSS")
                results.setdefault(label, []).append({"rate": rate, "pss_mib": pss})
    finally:
        client.close()
        server.kill()
    args.out.write_text(json.dumps({"n": args.n, "seconds": args.seconds, "runs": results}, indent=1))
    print(table(results, args))


def table(results, args):
    medians = {label: (median(r["rate"] for r in runs), median(r["pss_mib"] for r in runs))
               for label, runs in results.items()}
    peers = [medians[PEER_CONFIGS[p][0]] for p in PEER_CONFIGS if PEER_CONFIGS[p][0] in medians]
    best_rate = max((rate for rate, _ in peers), default=None)
    least_pss = min((pss for _, pss in peers), default=None)
    lines = [
        f"{args.n} tasks of {args.seconds * 1000:.0f} ms, one worker process, medians of {args.runs} interleaved "
        "runs; × is against the best peer's rate and the smallest peer's PSS.",
        "",
        "| config | tasks/s | × best peer | PSS MiB | × least peer PSS | rates (all runs) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for label, (rate, pss) in medians.items():
        ratio = f"{rate / best_rate:.2f}×" if best_rate else ""
        pss_ratio = f"{pss / least_pss:.2f}×" if least_pss else ""
        runs = ", ".join(f"{r['rate']:,.0f}" for r in results[label])
        lines.append(f"| {label} | {rate:,.0f} | {ratio} | {pss:.0f} | {pss_ratio} | {runs} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
