"""The seed's load test done right: POSTs, a logged-in session, then a check
that every accepted request's task ran.

    .venv/bin/python bench/load.py                       # 10, 50, 100 clients, SQLite
    .venv/bin/python bench/load.py --db postgres         # the same on a scratch PostgreSQL database
    .venv/bin/python bench/load.py --clients 10 --repeat 5

It starts its own Redis, a migrated scratch database with one user, the site
under `gunicorn -c deploy/gunicorn.conf.py` (GUNICORN_WORKERS=4) and
`--queue-workers` listen_queue processes. At each level, that many clients
run at once; each does --repeat rounds of
  - POST /api/tasks (bearer token) enqueueing tasks.tasks.add, expecting 202, and
  - POST /prodcons (a logged-in session, CSRF token) enqueueing one
    cook_dish, expecting 303,
over one keep-alive connection per client. It prints requests/s, errors and
p50/p99 per kind, then waits until every accepted task is final and fails
(exit 1) unless every one is SUCCESSFUL in the history: the API's by id, the
form's by count (the 303 carries no id).
"""

import argparse
import http.client
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.cookies import SimpleCookie
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import drop_pg, log, recreate_pg, redis_binary, spawn, stop  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "load-token"
USER, PASSWORD = "load", secrets.token_urlsafe(12)
PG_URL = "postgres://postgres@127.0.0.1:5432/mq_web_load"


class Client:
    """One user: a keep-alive connection and the cookies the site set.

    Cookies are kept by hand: with DEBUG off they are marked Secure, and
    this runs on plain http on the loopback."""

    def __init__(self, port):
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookies = {}

    def request(self, method, path, body=None, headers=None):
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            self.connection.request(method, path, body=body, headers=headers)
            response = self.connection.getresponse()
        except (http.client.HTTPException, OSError):
            self.connection.close()  # the next request opens a new one
            raise
        data = response.read()
        for header in response.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                self.cookies[name] = morsel.value
        return response.status, data

    def log_in(self):
        self.request("GET", "/accounts/login/")
        form = f"username={USER}&password={PASSWORD}&csrfmiddlewaretoken={self.cookies['csrftoken']}"
        status, _ = self.request("POST", "/accounts/login/", form, {"Content-Type": "application/x-www-form-urlencoded"})
        if status != 302 or "sessionid" not in self.cookies:
            raise RuntimeError(f"logging in answered {status}")


class Level:
    """What every client of one concurrency level saw."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latency = {"api": [], "form": []}
        self.errors = {"api": 0, "form": 0}
        self.api_ids = []
        self.form_accepted = 0

    def timed(self, kind, call, ok):
        started = time.perf_counter()
        try:
            status, body = call()
        except Exception:
            status, body = None, b""
        elapsed = (time.perf_counter() - started) * 1000
        with self.lock:
            self.latency[kind].append(elapsed)
            if status != ok:
                self.errors[kind] += 1
                return None
        return body


def run_client(port, level, repeat, barrier, offset, cookies):
    client = Client(port)
    client.cookies = dict(cookies)
    api_headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    form_headers = {"Content-Type": "application/x-www-form-urlencoded"}
    barrier.wait()
    for i in range(repeat):
        body = json.dumps({"task": "tasks.tasks.add", "args": [offset + i, 1]})
        answer = level.timed("api", lambda body=body: client.request("POST", "/api/tasks", body, api_headers), 202)
        if answer is not None:
            with level.lock:
                level.api_ids.append(json.loads(answer)["id"])
        form = f"count=1&number={i}&csrfmiddlewaretoken={client.cookies['csrftoken']}"
        if level.timed("form", lambda form=form: client.request("POST", "/prodcons", form, form_headers), 303) is not None:
            with level.lock:
                level.form_accepted += 1


def drive(port, clients, repeat):
    level = Level()
    # One login, its session shared by every client (each on its own
    # connection): password hashing is slow on purpose, and 100 logins at once
    # would measure PBKDF2 rather than the enqueue path.
    first = Client(port)
    first.log_in()
    barrier = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=run_client, args=(port, level, repeat, barrier, n * repeat, first.cookies)) for n in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()  # every client ready: the clock starts now
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return level, time.perf_counter() - started


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def check_history(level, timeout):
    """True when every accepted task is SUCCESSFUL; waits for them to finish."""
    from tasks.models import TaskRecord

    deadline = time.monotonic() + timeout
    while True:
        api = dict(TaskRecord.objects.filter(id__in=level.api_ids).values_list("id", "status"))
        form = list(TaskRecord.objects.filter(task_path="tasks.tasks.cook_dish").values_list("status", flat=True))
        done_api = sum(status == "SUCCESSFUL" for status in api.values())
        done_form = form.count("SUCCESSFUL")
        if done_api == len(level.api_ids) and done_form == level.form_accepted == len(form):
            return True, f"all {done_api} API tasks and {done_form} form tasks SUCCESSFUL"
        if time.monotonic() > deadline:
            missing = len(level.api_ids) - len(api)
            return False, (f"after {timeout}s: API {done_api}/{len(level.api_ids)} SUCCESSFUL ({missing} without a row), "
                           f"form {done_form}/{level.form_accepted} SUCCESSFUL ({len(form)} rows)")
        time.sleep(0.5)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="10,50,100", help="concurrency levels, comma separated")
    parser.add_argument("--repeat", type=int, default=5, help="rounds per client (an API call and a form post each)")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--pg-url", default=PG_URL, help="scratch PostgreSQL database, created and dropped")
    parser.add_argument("--queue-workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the tasks to finish")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mq-load-"))
    logdir = ROOT / "var" / "bench" / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    import socket

    def free_port():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    redis_port, web_port = free_port(), free_port()
    database_url = args.pg_url if args.db == "postgres" else f"sqlite:///{tmp / 'load.sqlite3'}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "mqsite.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_SECURE_SSL_REDIRECT": "0",
        "MQ_API_TOKENS": f"load:{TOKEN}",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "DATABASE_URL": database_url,
        "GUNICORN_BIND": f"127.0.0.1:{web_port}",
        "GUNICORN_WORKERS": "4",
    }
    os.environ.update({k: env[k] for k in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "DJANGO_SECRET_KEY", "MQ_API_TOKENS")})
    processes = []
    failed = False
    try:
        processes.append(spawn([redis_binary(None), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                               env, logdir / "load-redis.log", tmp))
        if args.db == "postgres":
            recreate_pg(database_url)
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
        # DEBUG off serves the manifest's hashed files, as a deployment does.
        subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from django.contrib.auth.models import User

        User.objects.create_superuser(USER, "load@example.com", PASSWORD)
        processes.append(spawn([sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "mqsite.wsgi"], env, logdir / "load-gunicorn.log", ROOT))
        for n in range(args.queue_workers):
            processes.append(spawn([sys.executable, "manage.py", "listen_queue", "-v", "0", "--worker-id", f"load-{n}"], env, logdir / f"load-worker-{n}.log", ROOT))
        deadline = time.monotonic() + 60
        while True:
            try:
                Client(web_port).request("GET", "/healthz")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("gunicorn did not answer; see var/bench/logs/load-gunicorn.log") from None
                time.sleep(0.3)

        print(f"\n{args.db}, gunicorn 4 workers (deploy/gunicorn.conf.py), {args.queue_workers} listen_queue, {args.repeat} rounds per client\n")
        print("| clients | kind | requests | req/s | errors | p50 ms | p99 ms | history |")
        print("|---|---|---|---|---|---|---|---|")
        for clients in [int(c) for c in args.clients.split(",")]:
            from tasks.models import TaskRecord

            TaskRecord.objects.all().delete()
            level, seconds = drive(web_port, clients, args.repeat)
            ok, verdict = check_history(level, args.timeout)
            failed |= not ok or any(level.errors.values())
            for kind in ("api", "form"):
                latencies = level.latency[kind]
                print(f"| {clients} | {kind} | {len(latencies)} | {len(latencies) / seconds:,.0f} | {level.errors[kind]} | "
                      f"{statistics.median(latencies):.0f} | {percentile(latencies, 99):.0f} | {verdict if kind == 'api' else ''} |", flush=True)
    finally:
        for process in reversed(processes):
            stop(process)
        if args.db == "postgres":
            from django.db import connections

            connections.close_all()
            drop_pg(database_url)
    log("FAILED: see the table" if failed else "every accepted request's task is SUCCESSFUL")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
