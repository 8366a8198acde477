"""Web throughput: POST /api/tasks under the shipped gunicorn settings, side by side.

    .venv/bin/python bench/web.py                 # 3 rounds, 10 s each, every config
    .venv/bin/python bench/web.py --rounds 1 --seconds 5

Each round starts every config in turn (the order rotates) under
`gunicorn -c deploy/gunicorn.conf.py` with GUNICORN_WORKERS=4, warms it up,
then drives it with `wrk -t2 -c10 --latency -s bench/wrk_post.lua` against one
Redis server (flushed between runs, no worker consuming). Configs:

- flask:   the seed's bare Flask /prodcons (bench/seed_flask.py): LPUSH + 303
- huey:    a plain Django 6 view enqueueing through Huey's HueyBackend (bench/huey_site)
- sqlite / postgres: mqsite's POST /api/tasks (token, validation, history row, push)
- sqlite-recycle1000: the same with max_requests=1000 (the previous policy)
- with --variants, sqlite-w2/-w8/-gthread4x4 and the same for postgres: other
  worker counts and classes (GUNICORN_WORKERS, GUNICORN_WORKER_CLASS/THREADS)

Beside the rates, each run reports the CPU time one request costs in each
process group (the gunicorn tree, Redis, every PostgreSQL process, wrk),
read from /proc around the measured wrk run (PostgreSQL is counted whole:
run it on an otherwise idle server). On a machine whose cores are
all busy, the rate is about cores / that total: the figures say where a
request's time goes, and what a target rate leaves for the app.

Flask, Huey and Django 6 come from var/bench-venv (bench/run.py creates it;
this script adds Flask). Only ratios within one round count: see bench/README.md.
"""

import argparse
import json
import os
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import drop_pg, log, recreate_pg, redis_binary, spawn, stop  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH_VENV = ROOT / "var" / "bench-venv"
OUT = ROOT / "var" / "bench"
TOKEN = "bench-token"
PG_URL = "postgres://postgres@127.0.0.1:5432/mq_web_bench"


def free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_bench_venv():
    python = BENCH_VENV / "bin" / "python"
    if python.exists() and not _runs_django6(python):
        shutil.rmtree(BENCH_VENV)  # made by bench/run.py with an older Python: Django 6 needs 3.12
    if not python.exists():
        subprocess.run([python312(), "-m", "venv", str(BENCH_VENV)], check=True)
    pins = ["flask==3.1.3", "huey==3.5.4", "gunicorn==27.0.1", "Django==6.1.3", "redis==8.1.0", "hiredis==3.5.0"]
    check = subprocess.run([str(python), "-c", "import flask, huey, django, gunicorn; assert django.VERSION >= (6,)"], capture_output=True)
    if check.returncode:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins], check=True)
    return str(python)


def _runs_django6(python):
    return subprocess.run([str(python), "-c", "import sys; sys.exit(sys.version_info < (3, 12))"]).returncode == 0


def python312():
    """The first Python 3.12+ that runs (as .ci/run looks for it): the Huey
    row is a Django 6 site, and Django 6 needs Python 3.12."""
    for candidate in ["python3.12", "python3.13", *sorted(map(str, Path.home().glob(".pyenv/versions/3.1[2-9]*/bin/python")))]:
        found = shutil.which(candidate)
        if found and _runs_django6(found):
            return found
    sys.exit("bench/web.py needs a Python 3.12 or newer for its Django 6 rows (tried python3.12, python3.13, ~/.pyenv)")


def configs(redis_url, sqlite_url, pg_url, bench_python, variants=False):
    gunicorn = ["-m", "gunicorn", "-c", str(ROOT / "deploy" / "gunicorn.conf.py")]
    mqsite_env = {
        "DJANGO_SETTINGS_MODULE": "mqsite.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_SECURE_SSL_REDIRECT": "0",
        "MQ_API_TOKENS": f"bench:{TOKEN}",
        "REDIS_URL": redis_url,
    }
    api = {"path": "/api/tasks", "body": '{"task": "tasks.tasks.cook_dish", "args": [5]}', "type": "application/json"}
    found = {
        "flask": {"python": bench_python, "argv": [*gunicorn, "--chdir", str(ROOT / "bench"), "seed_flask:app"],
                  "env": {"REDIS_URL": redis_url}, "path": "/prodcons", "body": "number=5",
                  "type": "application/x-www-form-urlencoded"},
        "huey": {"python": bench_python, "argv": [*gunicorn, "--chdir", str(ROOT / "bench"), "huey_site.wsgi"],
                 "env": {"REDIS_URL": redis_url, "DJANGO_SETTINGS_MODULE": "huey_site.settings"}, **api},
        "sqlite": {"python": sys.executable, "argv": [*gunicorn, "mqsite.wsgi"],
                   "env": {**mqsite_env, "DATABASE_URL": sqlite_url}, "token": TOKEN, **api},
        "sqlite-recycle1000": {"python": sys.executable, "argv": [*gunicorn, "mqsite.wsgi"],
                               "env": {**mqsite_env, "DATABASE_URL": sqlite_url, "GUNICORN_MAX_REQUESTS": "1000"},
                               "token": TOKEN, **api},
    }
    if pg_url:
        found["postgres"] = {"python": sys.executable, "argv": [*gunicorn, "mqsite.wsgi"],
                             "env": {**mqsite_env, "DATABASE_URL": pg_url}, "token": TOKEN, **api}
    if variants:
        # Other worker counts and classes for the same mqsite configs (the
        # choice in deploy/gunicorn.conf.py); gthread also keeps connections alive.
        shapes = {"w2": {"GUNICORN_WORKERS": "2"}, "w8": {"GUNICORN_WORKERS": "8"},
                  "gthread4x4": {"GUNICORN_WORKER_CLASS": "gthread", "GUNICORN_THREADS": "4"}}
        for db in [name for name in ("sqlite", "postgres") if name in found]:
            for shape, env in shapes.items():
                found[f"{db}-{shape}"] = {**found[db], "env": {**found[db]["env"], **env}}
    return found


def migrate(database_url):
    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "mqsite.settings", "REDIS_URL": "redis://127.0.0.1:1"}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)


def up(url):
    try:
        urllib.request.urlopen(url, timeout=1)
        return True
    except urllib.error.HTTPError:
        return True  # any answer: gunicorn and the app are up
    except OSError:
        return False


WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
WRK_P = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
WRK_BAD = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def process_table():
    """{pid: (parent pid, uid, CPU seconds so far)} of every process."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name may hold spaces and parentheses: split after the last ")".
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            uid = entry.stat().st_uid
        except (OSError, IndexError):
            continue  # gone meanwhile
        # utime, stime, and cutime, cstime: the CPU of children it has reaped,
        # so a gunicorn worker recycled (or a PostgreSQL backend that ended)
        # during the run still counts, in its parent.
        table[int(entry.name)] = (int(fields[1]), uid, sum(map(int, fields[11:15])) / tick)
    return table


def cpu_by_group(root_pid, redis_pid, postgres_uid):
    """CPU seconds so far of: the tree under root_pid, the Redis server,
    every process of the PostgreSQL user (server backends, WAL writer...)."""
    table = process_table()
    tree, frontier = set(), {root_pid}
    while frontier:
        tree |= frontier
        frontier = {pid for pid, (parent, _, _) in table.items() if parent in frontier} - tree
    return {
        "app": sum(table[pid][2] for pid in tree if pid in table),
        "redis": table.get(redis_pid, (0, 0, 0.0))[2],
        "postgres": sum(cpu for _, uid, cpu in table.values() if uid == postgres_uid) if postgres_uid is not None else 0.0,
    }


def postgres_uid():
    try:
        import pwd

        return pwd.getpwnam("postgres").pw_uid
    except (ImportError, KeyError):
        return None  # no local PostgreSQL user: its column stays 0


def wrk(cfg, url, seconds, connections=10):
    env = {**os.environ, "BENCH_BODY": cfg["body"], "BENCH_TYPE": cfg["type"], "BENCH_TOKEN": cfg.get("token", "")}
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(ROOT / "bench" / "wrk_post.lua"), url + cfg["path"]]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    result = {"rps": float(WRK_RATE.search(out).group(1)), "non_2xx_3xx": 0, "socket_errors": 0}
    for pct, value, unit in WRK_P.findall(out):
        result[f"p{pct}_ms"] = float(value) * UNIT_MS[unit]
    if bad := WRK_BAD.search(out):
        result["non_2xx_3xx"] = int(bad.group(1))
    if sock := WRK_SOCKET.search(out):
        result["socket_errors"] = sum(map(int, sock.groups()))
    return result


def measure(name, cfg, redis_client, seconds, logdir, round_no, redis_pid):
    port = free_port()
    env = {**os.environ, "GUNICORN_WORKERS": "4", **cfg["env"], "GUNICORN_BIND": f"127.0.0.1:{port}"}
    env.setdefault("GUNICORN_MAX_REQUESTS", "")
    process = spawn([cfg["python"], *cfg["argv"]], env, logdir / f"{name}-{round_no}.log", ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not up(url + "/"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {logdir}")
            time.sleep(0.2)
        wrk(cfg, url, 2)  # warm-up: every worker has imported and connected
        redis_client.flushall()
        uid = postgres_uid()
        before, wrk_before = cpu_by_group(process.pid, redis_pid, uid), resource.getrusage(resource.RUSAGE_CHILDREN)
        result = wrk(cfg, url, seconds)
        after, wrk_after = cpu_by_group(process.pid, redis_pid, uid), resource.getrusage(resource.RUSAGE_CHILDREN)
        # wrk is the only child that ends between the two readings.
        spent = {group: after[group] - before[group] for group in after}
        spent["wrk"] = (wrk_after.ru_utime + wrk_after.ru_stime) - (wrk_before.ru_utime + wrk_before.ru_stime)
        requests = result["rps"] * seconds
        result["cpu_ms_per_request"] = {group: round(1000 * value / requests, 3) for group, value in spent.items()}
        return result
    finally:
        stop(process)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--pg-url", default=PG_URL, help="scratch PostgreSQL database, created and dropped ('' to skip)")
    parser.add_argument("--only", default="", help="comma list of configs to run")
    parser.add_argument("--variants", action="store_true",
                        help="also 2 and 8 sync workers, and 4 gthread workers x 4 threads, for sqlite and postgres")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install wrk")
    import redis

    OUT.mkdir(parents=True, exist_ok=True)
    logdir = OUT / "logs"
    logdir.mkdir(exist_ok=True)
    bench_python = ensure_bench_venv()
    tmp = Path(tempfile.mkdtemp(prefix="mq-web-bench-"))
    redis_port = free_port()
    server = spawn([redis_binary(None), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                   os.environ, logdir / "redis.log", tmp)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    client = redis.Redis.from_url(redis_url)
    try:
        for _ in range(50):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        sqlite_url = f"sqlite:///{tmp / 'bench.sqlite3'}"
        migrate(sqlite_url)
        pg_url = args.pg_url
        if pg_url:
            recreate_pg(pg_url)
            migrate(pg_url)
        chosen = configs(redis_url, sqlite_url, pg_url, bench_python, args.variants)
        if args.only:
            chosen = {name: chosen[name] for name in args.only.split(",")}
        names = list(chosen)
        runs = []
        for round_no in range(args.rounds):
            order = names[round_no % len(names):] + names[: round_no % len(names)]
            for name in order:
                result = measure(name, chosen[name], client, args.seconds, logdir, round_no, server.pid)
                log(f"round {round_no + 1} {name}: {json.dumps(result)}")
                runs.append({"round": round_no, "config": name, **result})
        report(runs, names)
        (OUT / "web.json").write_text(json.dumps(runs, indent=2))
    finally:
        client.close()
        stop(server)
        if args.pg_url:
            drop_pg(args.pg_url)
        shutil.rmtree(tmp, ignore_errors=True)


def report(runs, names):
    by = {(r["round"], r["config"]): r for r in runs}
    rounds = sorted({r["round"] for r in runs})
    print("\n| config | req/s median (min..max) | p50 ms | p99 ms median (max) | errors | × flask (median of same-round ratios) | × huey |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        mine = [by[(k, name)] for k in rounds if (k, name) in by]
        rps = [r["rps"] for r in mine]
        p99 = [r.get("p99_ms", float("nan")) for r in mine]
        p50 = [r.get("p50_ms", float("nan")) for r in mine]
        errors = sum(r["non_2xx_3xx"] + r["socket_errors"] for r in mine)
        ratios = {}
        for base in ("flask", "huey"):
            values = [by[(k, name)]["rps"] / by[(k, base)]["rps"] for k in rounds if (k, name) in by and (k, base) in by]
            ratios[base] = f"{statistics.median(values):.2f}×" if values else "-"
        print(f"| {name} | {statistics.median(rps):,.0f} ({min(rps):,.0f}..{max(rps):,.0f}) | {statistics.median(p50):.1f} | "
              f"{statistics.median(p99):.1f} ({max(p99):.1f}) | {errors} | {ratios['flask']} | {ratios['huey']} |")
    groups = ("app", "redis", "postgres", "wrk")
    print("\nCPU ms per request, medians over the rounds (app: the gunicorn master and workers;"
          f" the machine has {os.cpu_count()} cores, so cores / total bounds the rate):\n")
    print("| config | " + " | ".join(groups) + " | total | × flask's total |")
    print("|---|" + "---:|" * (len(groups) + 2))
    totals = {}
    for name in names:
        costs = [by[(k, name)]["cpu_ms_per_request"] for k in rounds if "cpu_ms_per_request" in by.get((k, name), {})]
        if not costs:
            continue
        medians = [statistics.median(cost[group] for cost in costs) for group in groups]
        totals[name] = statistics.median(sum(cost.values()) for cost in costs)
        ratio = f"{totals[name] / totals['flask']:.2f}×" if "flask" in totals else "-"
        print(f"| {name} | " + " | ".join(f"{value:.3f}" for value in medians) + f" | {totals[name]:.3f} | {ratio} |")


if __name__ == "__main__":
    main()
