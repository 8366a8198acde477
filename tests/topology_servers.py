"""Real Redis Sentinel and Redis Cluster deployments on free loopback ports,
started and torn down by the topology tests (tests/test_sentinel.py,
tests/test_cluster.py).

redis-server 7 and redis-cli from PATH (package redis-server), as a team
runs them: Sentinel and Cluster mode are features of the real server. Every
node requires one password generated per deployment, written to 0600 config
files (the sentinels' auth-pass too), never on a command line. Timeouts are
short (down-after-milliseconds, cluster-node-timeout) so a failover takes a
second or two, not the production defaults' thirty.
"""

import os
import random
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from tests.redis_server import free_port

SERVICE = "mq-master"


# Workers and listeners against a deployment that fails over: short leases,
# so a lease the dead master took along is noticed soon.
FAILOVER_SETTINGS = {"MQ_LEASE_SECONDS": 2.0, "MQ_SOCKET_TIMEOUT": 2.0, "MQ_BLOCK_SECONDS": 0.5}


def binaries():
    """(redis-server, redis-cli), or None when the machine lacks them."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    return (server, cli) if server and cli else None


def free_cluster_port():
    """A free port whose cluster bus port (port + 10000) is free too, so both
    fit under 65536: an ephemeral port from the kernel often does not."""
    for _ in range(200):
        port = random.randint(20000, 29999)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (redis.RedisError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Node:
    """One redis-server (data node or sentinel) with its own directory and config."""

    def __init__(self, workdir, password, lines, sentinel=False, port=None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = password
        self.lines = lines
        self.sentinel = sentinel
        self.process = None

    def start(self):
        config = self.workdir / "node.conf"
        if not config.exists():  # a sentinel rewrites its config: keep it across restarts
            fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(
                    f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\nlogfile {self.workdir / 'server.log'}\n"
                    f"requirepass {self.password}\n"
                )
                handle.write("".join(f"{line}\n" for line in self.lines))
        argv = [shutil.which("redis-server"), str(config)] + (["--sentinel"] if self.sentinel else [])
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.client(socket_connect_timeout=0.2).ping(), 10, f"redis-server on port {self.port}")
        return self

    def client(self, **kwargs):
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5, **kwargs)

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def kill(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class SentinelDeployment:
    """One master, one replica, three sentinels watching them (quorum 2)."""

    def __init__(self, workdir):
        workdir = Path(workdir)
        self.password = secrets.token_urlsafe(24)
        data = ['save ""', "appendonly no", f"masterauth {self.password}"]
        self.master = Node(workdir / "master", self.password, data)
        self.replica = Node(workdir / "replica", self.password, data)
        self.sentinels = [Node(workdir / f"sentinel{i}", self.password, [], sentinel=True) for i in range(3)]

    def start(self):
        self.master.start()
        self.replica.lines.append(f"replicaof 127.0.0.1 {self.master.port}")
        self.replica.start()
        wait_until(
            lambda: self.replica.client().info("replication")["master_link_status"] == "up", 10, "the replica to sync"
        )
        for sentinel in self.sentinels:
            sentinel.lines += [
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2",
                f"sentinel auth-pass {SERVICE} {self.password}",
                f"sentinel sentinel-pass {self.password}",
                f"sentinel down-after-milliseconds {SERVICE} 1000",
                f"sentinel failover-timeout {SERVICE} 5000",
                f"sentinel parallel-syncs {SERVICE} 1",
            ]
            sentinel.start()
        # Every sentinel has found the replica and the other sentinels: a
        # failover can then be agreed on and has somewhere to go.
        wait_until(
            lambda: all(
                s.client().sentinel_master(SERVICE)["num-slaves"] >= 1
                and s.client().sentinel_master(SERVICE)["num-other-sentinels"] >= 2
                for s in self.sentinels
            ),
            20,
            "the sentinels to know each other and the replica",
        )
        return self

    @property
    def url(self):
        hosts = ",".join(s.address for s in self.sentinels)
        return f"redis+sentinel://:{self.password}@{hosts}/{SERVICE}/0"

    def master_address(self):
        host, port = self.sentinels[0].client().sentinel_get_master_addr_by_name(SERVICE)
        return f"{host.decode() if isinstance(host, bytes) else host}:{port}"

    def node_at(self, address):
        return next(n for n in (self.master, self.replica) if n.address == address)

    def revive(self, node):
        """Start a killed data node again; the sentinels make it a replica of
        the current master. Returns once it is synced and they see it healthy,
        so the next failover has somewhere to go."""
        node.start()
        # What the sentinels would do themselves on their next look at it,
        # done now so that the test need not wait for that look.
        host, port = self.master_address().split(":")
        node.client().replicaof(host, port)

        def healthy_replica():
            replicas = self.sentinels[0].client().sentinel_slaves(SERVICE)
            mine = [r for r in replicas if f"{r['ip']}:{r['port']}" == node.address]
            return (
                mine
                and mine[0]["flags"] == "slave"
                and node.client().info("replication").get("master_link_status") == "up"
            )

        wait_until(healthy_replica, 30, f"{node.address} to come back as a synced replica")

    def failover(self):
        self.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", SERVICE)

    def empty_and_settled(self):
        """Empty the master, and return once the other data node replicates
        it, emptied too. After a forced failover the demoted master is
        reconfigured as a replica only when the sentinels get to it: until
        then it keeps its old data, and promoted by the next failover it
        would bring back an earlier test's items."""
        host, port = self.master_address().split(":")
        master = self.node_at(f"{host}:{port}")
        replica = self.replica if master is self.master else self.master
        master.client().flushall()

        def synced():
            info = replica.client().info("replication")
            return (
                info.get("role") == "slave"
                and f"{info.get('master_host')}:{info.get('master_port')}" == master.address
                and info.get("master_link_status") == "up"
                and replica.client().dbsize() == 0
            )

        wait_until(synced, 30, f"{replica.address} to replicate the emptied master {master.address}")

    def stop(self):
        for node in [*self.sentinels, self.replica, self.master]:
            node.stop()


class ClusterDeployment:
    """Three masters, one replica each, made by `redis-cli --cluster create`."""

    def __init__(self, workdir, masters=3):
        workdir = Path(workdir)
        self.password = secrets.token_urlsafe(24)
        self.nodes = [
            Node(
                workdir / f"node{i}",
                self.password,
                [
                    'save ""',
                    "appendonly no",
                    f"masterauth {self.password}",
                    "cluster-enabled yes",
                    f"cluster-config-file {workdir / f'node{i}' / 'nodes.conf'}",
                    "cluster-node-timeout 1000",
                    # A replica takes over however long its link was down:
                    # the master it replaces was SIGKILLed by the test.
                    "cluster-replica-validity-factor 0",
                ],
                port=free_cluster_port(),
            )
            for i in range(masters * 2)
        ]

    def start(self):
        for node in self.nodes:
            node.start()
        env = {**os.environ, "REDISCLI_AUTH": self.password}  # not on the command line
        subprocess.run(
            [
                shutil.which("redis-cli"),
                "--cluster",
                "create",
                *(n.address for n in self.nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_until(self.settled, 30, "cluster_state:ok and every replica synced")
        return self

    def settled(self):
        """Every live node says cluster_state:ok and every replica is synced."""
        live = [n for n in self.nodes if n.process and n.process.poll() is None]
        if not all(b"cluster_state:ok" in n.client().execute_command("CLUSTER", "INFO") for n in live):
            return False
        infos = [n.client().info("replication") for n in live]
        return all(i.get("master_link_status") == "up" for i in infos if i["role"] == "slave")

    @property
    def url(self):
        return f"redis+cluster://:{self.password}@{self.nodes[0].address},{self.nodes[1].address}/"

    def client(self):
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, password=self.password, socket_timeout=5)

    def owner_of(self, key):
        """The node serving ``key``'s slot now (asked of a live node)."""
        for node in self.nodes:
            if node.process and node.process.poll() is None:
                slot = node.client().execute_command("CLUSTER", "KEYSLOT", key)
                for start, end, master, *_ in node.client().execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        address = f"{master[0].decode()}:{master[1]}"
                        return next(n for n in self.nodes if n.address == address)
        raise RuntimeError("no live node")

    def stop(self):
        for node in self.nodes:
            node.stop()
