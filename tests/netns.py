"""Hosts for the many-hosts test: network namespaces on a private bridge.

Each host is a network namespace (`ip netns`) joined by a veth pair to a
bridge that only this run uses, in a /24 of 10.77.0.0/16 that no interface
of the machine has. Nothing is routed beyond the bridge: the hosts reach the
bridge's own address (the root namespace) and each other, never outside
traffic. Names carry a per-run token, so two runs never meet, and
``Network.remove`` deletes everything it made, whatever failed before.

The hosts reach the databases through the bridge address only: Redis listens
there itself; PostgreSQL, which listens on 127.0.0.1, through a ``TcpRelay``
bound to the bridge address. Taking a host's link down cuts both at once,
as a pulled cable would.
"""

import os
import secrets
import shutil
import socket
import subprocess
import threading


def unavailable():
    """Why these tests cannot run here, or "" when they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs the `ip` command (iproute2)"
    return ""


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def _free_subnet():
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    for _ in range(100):
        third = secrets.randbelow(256)
        if f" 10.77.{third}." not in used:
            return f"10.77.{third}"
    raise RuntimeError("no free 10.77.x.0/24 subnet")


class Network:
    """A bridge at <subnet>.1 and ``hosts`` namespaces at <subnet>.11, .12, ..."""

    def __init__(self, hosts):
        self.token = secrets.token_hex(3)
        self.subnet = _free_subnet()
        self.bridge = f"mqb{self.token}"  # interface names: 15 characters at most
        self.address = f"{self.subnet}.1"
        self.hosts = [f"mq-{self.token}-h{n}" for n in range(1, hosts + 1)]
        self._made_bridge = False
        self._made = []

    def create(self):
        ip("link", "add", self.bridge, "type", "bridge")
        self._made_bridge = True
        ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for n, host in enumerate(self.hosts, start=1):
            ip("netns", "add", host)
            self._made.append(host)
            outside, inside = self.link(host), f"mqp{self.token}{n}"
            ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            ip("link", "set", inside, "netns", host)
            ip("link", "set", outside, "master", self.bridge, "up")
            ip("-n", host, "addr", "add", f"{self.subnet}.{10 + n}/24", "dev", inside)
            ip("-n", host, "link", "set", inside, "up")
            ip("-n", host, "link", "set", "lo", "up")
        return self

    def link(self, host):
        """The root-namespace end of ``host``'s cable."""
        return f"mqv{self.token}{self.hosts.index(host) + 1}"

    def cut(self, host):
        ip("link", "set", self.link(host), "down")

    def mend(self, host):
        ip("link", "set", self.link(host), "up")

    def command(self, host, argv):
        """``argv`` run inside ``host``'s namespace."""
        return ["ip", "netns", "exec", host, *argv]

    def remove(self):
        # Deleting a namespace deletes the veth pair that has an end in it.
        for host in self._made:
            subprocess.run(["ip", "netns", "del", host], capture_output=True, timeout=30, check=False)
        if self._made_bridge:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=30, check=False)


class TcpRelay:
    """Forwards TCP connections from (host, port) to ``target``, byte for
    byte: PostgreSQL for the namespaces, which cannot reach the root
    namespace's loopback. One thread per direction of each connection, so a
    stalled host (its link down, its buffers full) stalls nobody else."""

    def __init__(self, host, target):
        self.target = target
        self.listener = socket.create_server((host, 0))
        self.port = self.listener.getsockname()[1]
        self.sockets = []
        self.lock = threading.Lock()

    def start(self):
        threading.Thread(target=self._accept, name="tcp-relay", daemon=True).start()
        return self

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                return  # stop() closed the listener
            server.settimeout(None)
            with self.lock:
                self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
