"""Start real mqsite processes (workers, listeners, commands) against the
test database and the suite's Redis server, and wait on what they record."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from django.db import connection, connections

BASE_DIR = Path(__file__).resolve().parent.parent


def database_url():
    """The test database, as a URL a child process can open."""
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    return f"postgres://{s['USER']}{password}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def child_env(redis_url, fault="", **settings):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url(),
        "MQ_TEST_SETTINGS": json.dumps(settings),
        "MQ_FAULT": fault,
        "PYTHONUNBUFFERED": "1",
    }
    return env


def manage(redis_url, *args, fault="", settings=None, log_path=None, **popen):
    """Start `manage.py ARGS...` as a child process."""
    stderr = open(log_path, "ab") if log_path else subprocess.PIPE
    return subprocess.Popen(
        [sys.executable, str(BASE_DIR / "manage.py"), *args],
        env=child_env(redis_url, fault=fault, **(settings or {})),
        cwd=BASE_DIR,
        stdout=subprocess.PIPE,
        stderr=stderr,
        **popen,
    )


def run_manage(redis_url, *args, timeout=60, settings=None, fault=""):
    """Run `manage.py ARGS...` to completion; returns CompletedProcess."""
    return subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), *args],
        env=child_env(redis_url, fault=fault, **(settings or {})),
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(predicate, timeout=20, interval=0.05, message="condition"):
    """Poll until predicate() is truthy; fail the test with ``message`` if not."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def stop(process, sig=signal.SIGTERM, timeout=20):
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def run_in_thread(target):
    """Start target() in a thread that closes its own database connections."""

    def run():
        try:
            target()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread
