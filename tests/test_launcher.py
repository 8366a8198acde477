"""`make run`'s launcher (scripts/run.py): a busy port, the embedded Redis,
child supervision, and one full run of the site stopped with Ctrl-C."""

import http.cookiejar
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

LAUNCHER = Path(__file__).resolve().parent.parent / "scripts" / "run.py"


def load_launcher():
    spec = importlib.util.spec_from_file_location("mq_launcher", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


launcher = load_launcher()

# A child that only dies to SIGKILL, and says when its handler is in place.
STUBBORN_CHILD = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)


def launcher_env(tmp_path, port):
    """What `make run` sees on a fresh machine: nothing of the suite's setup."""
    unset = {"REDIS_URL", "DATABASE_URL", "MQ_API_TOKENS", "DJANGO_SETTINGS_MODULE"}
    env = {key: value for key, value in os.environ.items() if key not in unset}
    env.update(PORT=str(port), MQ_VAR_DIR=str(tmp_path / "var"))
    return env


@pytest.mark.no_redis
def test_busy_port_is_a_clear_error_and_starts_nothing(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, str(LAUNCHER)],
            env=launcher_env(tmp_path, port),
            capture_output=True,
            text=True,
            timeout=15,
        )
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    # The check comes first: no var/ means no database, no token, no Redis.
    assert not (tmp_path / "var").exists()


@pytest.mark.no_redis
def test_port_that_is_not_a_number_is_a_clear_error(tmp_path):
    env = dict(launcher_env(tmp_path, 8000), PORT="http")
    result = subprocess.run([sys.executable, str(LAUNCHER)], env=env, capture_output=True, text=True, timeout=15)
    assert result.returncode == 1
    assert "PORT must be a number from 1 to 65535, not 'http'" in result.stderr
    assert not (tmp_path / "var").exists()


@pytest.mark.no_redis
def test_embedded_redis_starts_without_persistence_and_stops(tmp_path):
    supervisor = launcher.Supervisor()
    url = launcher.start_redis(supervisor, tmp_path)
    port = urllib.parse.urlsplit(url).port
    try:
        assert port != 6379
        client = redis.Redis.from_url(url, decode_responses=True)
        assert client.ping()
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("dir") == {"dir": str(tmp_path / "redis")}
        client.close()
    finally:
        supervisor.stop_all()
    assert supervisor.redis.returncode == 0
    assert not launcher.redis_answers(port)


@pytest.mark.no_redis
def test_embedded_redis_refuses_clients_without_its_password(tmp_path):
    """Any local user can reach a loopback port: only the URL's password lets
    a client in, and the password shows neither in `ps` nor to other users."""
    supervisor = launcher.Supervisor()
    url = launcher.start_redis(supervisor, tmp_path)
    parts = urllib.parse.urlsplit(url)
    try:
        stranger = redis.Redis(host=parts.hostname, port=parts.port, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.AuthenticationError):
            stranger.lpush("task:prodcons:queue", "5")
        stranger.close()
        assert parts.password and len(parts.password) >= 20
        assert redis.Redis.from_url(url).ping()
        with open(f"/proc/{supervisor.redis.pid}/cmdline", "rb") as handle:
            assert parts.password not in handle.read().decode()
        assert (tmp_path / launcher.EMBEDDED_REDIS_URL_FILE).read_text().strip() == url
    finally:
        supervisor.stop_all()


@pytest.mark.no_redis
@pytest.mark.skipif(not shutil.which("redis-cli"), reason="no redis-cli on this machine")
def test_the_readmes_redis_cli_line_reaches_the_embedded_redis(tmp_path):
    supervisor = launcher.Supervisor()
    launcher.start_redis(supervisor, tmp_path)
    try:
        # The README's line, with var/ being tmp_path here.
        done = subprocess.run(
            f'redis-cli --no-auth-warning -u "$(cat {launcher.EMBEDDED_REDIS_URL_FILE})" LPUSH task:prodcons:queue 5',
            shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=10,
        )
        assert (done.returncode, done.stdout.strip()) == (0, "1"), done.stdout + done.stderr
    finally:
        supervisor.stop_all()


@pytest.mark.no_redis
def test_a_child_that_dies_is_named():
    supervisor = launcher.Supervisor()
    supervisor.start_service("listen_queue", [sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ))
    supervisor.services["listen_queue"].wait(10)
    with pytest.raises(launcher.LaunchError, match=r"^listen_queue exited unexpectedly \(exit status 3\)$"):
        supervisor.check()


@pytest.mark.no_redis
def test_stop_terminates_then_kills_stragglers():
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], process_group=0)
    stubborn = subprocess.Popen(
        [sys.executable, "-c", STUBBORN_CHILD], stdout=subprocess.PIPE, text=True, process_group=0
    )
    assert stubborn.stdout.readline() == "ready\n"
    launcher.stop_processes([polite, stubborn], timeout=0.5)
    assert polite.returncode == -signal.SIGTERM
    assert stubborn.returncode == -signal.SIGKILL
    stubborn.stdout.close()


@pytest.mark.no_redis
def test_api_token_is_private_and_kept_across_runs(tmp_path):
    path = tmp_path / "api_token"
    token = launcher.api_token(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 32
    assert launcher.api_token(path) == token


def wait_for_line(path, prefix, proc, timeout=60):
    """The launcher's output goes to a file, so its children never block on a full pipe."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines():
            if line.startswith(prefix):
                return line[len(prefix):]
        assert proc.poll() is None, f"launcher exited early:\n{path.read_text()}"
        time.sleep(0.1)
    raise AssertionError(f"no {prefix!r} line within {timeout} s:\n{path.read_text()}")


def admin_login(site, password):
    """Log in through the admin form; return the page the login lands on."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    form = opener.open(f"{site}admin/login/?next=/admin/", timeout=10).read().decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    data = urllib.parse.urlencode(
        {"csrfmiddlewaretoken": csrf, "username": "admin", "password": password, "next": "/admin/"}
    ).encode()
    request = urllib.request.Request(f"{site}admin/login/", data=data, headers={"Referer": f"{site}admin/login/"})
    return opener.open(request, timeout=10)


def post_message(site, token):
    request = urllib.request.Request(
        f"{site}api/messages",
        data=json.dumps({"data": "hello from the launcher test"}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


@pytest.fixture
def make_run(tmp_path):
    """Start the launcher as `make run` would; yield (process, output file, port)."""
    port = launcher.free_port()
    output = tmp_path / "launcher.log"
    with output.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, str(LAUNCHER)],
            env=launcher_env(tmp_path, port),
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield proc, output, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(15)


@pytest.mark.no_redis
@pytest.mark.slow
def test_make_run_keeps_var_private(tmp_path, make_run):
    """var/ holds the database (with session keys), the API token and the
    Redis password: owner only, even when an older checkout left it open."""
    var = tmp_path / "var"
    var.mkdir(mode=0o755)
    var.chmod(0o755)
    (var / "db.sqlite3").touch(mode=0o644)
    (var / "db.sqlite3").chmod(0o644)
    proc, output, _ = make_run
    wait_for_line(output, "API token: ", proc)
    found = {path.name for path in var.rglob("*")}
    # (db.sqlite3-wal and -shm come and go with the connections; checked when there.)
    expected = {"db.sqlite3", "api_token", "embedded-redis.url", launcher.LOCK_FILE, "redis", "redis.log", "redis.conf"}
    assert expected <= found
    modes = {str(path.relative_to(tmp_path)): oct(stat.S_IMODE(path.lstat().st_mode)) for path in [var, *var.rglob("*")]}
    assert modes == {
        name: oct(0o700 if (tmp_path / name).is_dir() else 0o600) for name in modes
    }


@pytest.mark.no_redis
@pytest.mark.slow
def test_make_run_serves_the_site_and_ctrl_c_stops_everything(tmp_path):
    port = launcher.free_port()
    output = tmp_path / "launcher.log"
    with output.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, str(LAUNCHER)],
            env=launcher_env(tmp_path, port),
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        token = wait_for_line(output, "API token: ", proc)
        admin = wait_for_line(output, "Admin: ", proc)
        redis_line = wait_for_line(output, "Redis: ", proc)
        redis_url = (tmp_path / "var" / launcher.EMBEDDED_REDIS_URL_FILE).read_text().strip()
        redis_port, redis_password = urllib.parse.urlsplit(redis_url).port, urllib.parse.urlsplit(redis_url).password
        assert redis_password not in redis_line
        assert launcher.redis_answers(redis_port, redis_password)
        site = f"http://127.0.0.1:{port}/"
        assert admin.startswith(f"{site}admin/ user=admin password=")
        password = admin.rsplit("password=", 1)[1]

        landed = admin_login(site, password)
        assert urllib.parse.urlsplit(landed.url).path == "/admin/"
        assert (tmp_path / "var" / "api_token").read_text().strip() == token
        assert post_message(site, token) == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            post_message(site, token + "x")
        assert refused.value.code == 401

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(15)
    assert "SIGINT received, stopping." in output.read_text()
    assert launcher.port_is_free(port)
    assert not launcher.redis_answers(redis_port, redis_password)


# --- which Redis a command run by hand talks to ---------------------------------
NO_REDIS = "no Redis: set REDIS_URL or start `make run`"
REDIS_COMMANDS = [
    ["queue_status"],
    ["listen_queue", "--burst"],
    ["listen_channel", "--max-messages", "1"],
    ["publish", "hello"],
    ["enqueue", "tasks.tasks.add", "--args", "[1, 2]"],
]


def manage_by_hand(tmp_path, *args):
    """`manage.py ARGS` typed in a terminal of the project: no REDIS_URL."""
    return subprocess.run(
        [sys.executable, str(LAUNCHER.parent.parent / "manage.py"), *args],
        env=launcher_env(tmp_path, 8000),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.no_redis
@pytest.mark.parametrize("args", REDIS_COMMANDS, ids=lambda args: args[0])
def test_without_redis_url_or_make_run_a_command_says_so_and_fails(tmp_path, args):
    """Never a silent fall back to 127.0.0.1:6379, someone else's Redis."""
    done = manage_by_hand(tmp_path, *args)
    assert done.returncode != 0
    assert NO_REDIS in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.no_redis
def test_without_redis_the_database_commands_still_work(tmp_path):
    assert manage_by_hand(tmp_path, "check").returncode == 0
    migrated = manage_by_hand(tmp_path, "migrate", "--noinput")
    assert migrated.returncode == 0, migrated.stderr
    # Created by the settings, owner only: the database holds session keys.
    assert stat.S_IMODE((tmp_path / "var").stat().st_mode) == 0o700


def test_a_url_file_left_by_a_dead_make_run_is_not_trusted(tmp_path, redis_server):
    """A make run killed with SIGKILL leaves its URL file behind; the port may
    since belong to another server (here: one that answers)."""
    var = tmp_path / "var"
    var.mkdir()
    (var / launcher.EMBEDDED_REDIS_URL_FILE).write_text(redis_server.url + "\n")
    (var / launcher.LOCK_FILE).write_text("12345\n")  # no process holds it
    done = manage_by_hand(tmp_path, "queue_status")
    assert done.returncode != 0
    assert NO_REDIS in done.stderr


@pytest.mark.no_redis
@pytest.mark.slow
def test_commands_by_hand_use_a_live_make_run_and_a_second_one_refuses(tmp_path, make_run):
    proc, output, port = make_run
    wait_for_line(output, "API token: ", proc)
    url_file = tmp_path / "var" / launcher.EMBEDDED_REDIS_URL_FILE
    url = url_file.read_text()

    status = manage_by_hand(tmp_path, "queue_status", "--json")
    assert status.returncode == 0, status.stderr
    assert "default" in json.loads(status.stdout)["queues"]

    second = subprocess.Popen(
        [sys.executable, str(LAUNCHER)],
        env=launcher_env(tmp_path, launcher.free_port()),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = second.communicate(timeout=30)
    finally:
        if second.poll() is None:  # it started: SIGINT stops its children too, SIGKILL would not
            second.send_signal(signal.SIGINT)
            second.communicate(timeout=15)
    assert second.returncode == 1
    assert f"another `make run` (pid {proc.pid}) is using {tmp_path / 'var'}" in stderr
    assert url_file.read_text() == url
    assert launcher.redis_answers(urllib.parse.urlsplit(url).port, urllib.parse.urlsplit(url).password)

    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0
    assert not url_file.exists()
    after = manage_by_hand(tmp_path, "queue_status")
    assert after.returncode != 0
    assert NO_REDIS in after.stderr
