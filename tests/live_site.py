"""The whole site, for tests that drive it from outside (a real browser):
gunicorn with the shipped deploy/gunicorn.conf.py, one listen_queue and one
listen_channel, all against the suite's Redis and the test database."""

import secrets
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.processes import BASE_DIR, child_env, stop, wait_for


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class LiveSite:
    """Start with start(), read logs in log_dir, stop with stop()."""

    def __init__(self, redis_url, log_dir: Path):
        self.redis_url = redis_url
        self.log_dir = log_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen] = []
        self.logs: list = []

    def start(self):
        env = child_env(self.redis_url)
        # Only the test process needs it (Playwright's loop); never the site.
        env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        # DEBUG on: whitenoise then serves the static files from the apps
        # (no collectstatic into the checkout's var/) and cookies are not
        # marked Secure on plain http. Two workers: the page's polling and a
        # form's POST must not wait on each other.
        # One secret for both workers, or a session one signed is "corrupted" for the other.
        env.update(
            GUNICORN_BIND=f"127.0.0.1:{self.port}",
            GUNICORN_WORKERS="2",
            DJANGO_DEBUG="1",
            DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        )
        self.processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "mqsite.wsgi"],
                env=env,
                cwd=BASE_DIR,
                stdout=self._log("gunicorn"),
                stderr=subprocess.STDOUT,
            )
        )
        for command in ("listen_queue", "listen_channel"):
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "manage.py", command],
                    env=env,
                    cwd=BASE_DIR,
                    stdout=self._log(command),
                    stderr=subprocess.STDOUT,
                )
            )
        wait_for(lambda: answers(self.url + "/favicon.ico") or self._died(), timeout=60, message="gunicorn to answer")
        if died := self._died():
            raise RuntimeError(f"{died} exited early; see {self.log_dir}")
        return self

    def _log(self, name):
        handle = (self.log_dir / f"{name}.log").open("ab")
        self.logs.append(handle)
        return handle

    def _died(self):
        for process in self.processes:
            if process.poll() is not None:
                return " ".join(process.args[1:3]) if isinstance(process.args, list) else str(process.args)
        return ""

    def stop(self):
        for process in reversed(self.processes):
            stop(process)
        for handle in self.logs:
            handle.close()
        self.processes.clear()
        self.logs.clear()
