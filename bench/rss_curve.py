#!/usr/bin/env python3
"""Memory over a long drain: one `listen_queue --concurrency C` worker runs N
tasks (default 1,000,000 no-op tasks at --concurrency 16) and its resident
memory is sampled as it goes.

usage: rss_curve.py [--n 1000000] [--concurrency 16] [--every 2]

The queue is filled first (enqueue_many in calls of 1,000, history rows in
a scratch SQLite database), then one --burst worker drains it. Every EVERY
seconds the script reads the worker's VmRSS (/proc/<pid>/status) and how
many tasks are done (N minus what is still in Redis). It prints one row per
tenth of the run and the spread of RSS over the second half: a worker that
leaks grows with the tasks it has run, one that does not stays flat once
warm.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import PYTHON, QUEUE_KEY, MqConfig, log, redis_binary, spawn  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

BENCH = ROOT / "bench"


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="tasks (default 1,000,000)")
    parser.add_argument("--concurrency", type=int, default=16, help="listen_queue --concurrency (default 16)")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between samples (default 2)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="mqsite-rss-"))
    server = RedisServer(workdir, binary=redis_binary(None), require_password=False).start()
    client = server.client()
    mq = MqConfig("sqlite", f"sqlite:///{workdir / 'rss.sqlite3'}", server.url, workdir)
    mq.env.update(DJANGO_SETTINGS_MODULE="bench.io_settings", IO_DONE_FILE="/dev/null")
    mq.setup()
    mq.fresh(client)
    try:
        started = time.monotonic()
        subprocess.run([PYTHON, str(BENCH / "io.py"), "--mq-enqueue", str(args.n), "bench.io_tasks.nap", "0"],
                       cwd=ROOT, env=mq.env, check=True)
        log(f"enqueued {args.n:,} in {time.monotonic() - started:.0f} s")
        worker = spawn(mq.manage("listen_queue", "--burst", "-v", "0", "--concurrency", str(args.concurrency)),
                       mq.env, workdir / "worker.log", ROOT)
        samples = []  # (seconds, taken, rss MiB)
        started = time.monotonic()
        while worker.poll() is None:
            try:
                rss = rss_mib(worker.pid)
            except (FileNotFoundError, RuntimeError):
                break
            done = args.n - client.llen(QUEUE_KEY)
            if rss:  # 0 while the child is still being exec'd
                samples.append((time.monotonic() - started, done, rss))
            time.sleep(args.every)
        worker.wait()
        if worker.returncode:
            raise RuntimeError(f"worker exited {worker.returncode}; see {workdir / 'worker.log'}")
    finally:
        client.close()
        server.kill()
    print(table(samples, args))


def table(samples, args):
    lines = [
        f"RSS of one `listen_queue --concurrency {args.concurrency}` worker over {args.n:,} no-op tasks",
        "",
        "| tasks taken | seconds | RSS MiB |",
        "|---:|---:|---:|",
    ]
    marks = [args.n * k // 10 for k in range(11)]
    for mark in marks:
        seconds, done, rss = min(samples, key=lambda s: abs(s[1] - mark))
        lines.append(f"| {done:,} | {seconds:.0f} | {rss:.1f} |")
    second_half = [s[2] for s in samples if s[1] >= args.n // 2]
    if second_half:
        lines.append("")
        lines.append(f"second half: RSS min {min(second_half):.1f}, max {max(second_half):.1f} MiB "
                     f"({len(second_half)} samples); drain {args.n / samples[-1][0]:,.0f} tasks/s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
