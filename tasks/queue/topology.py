"""Which Redis topology a REDIS_URL names, and the redis-py client for it.

Three topologies, each through redis-py's own client (mqsite adds no
coordinator of its own, see DESIGN section 10):

- one server: ``redis://``, ``rediss://`` (TLS), ``unix://`` -> ``Redis.from_url``;
- Sentinel: ``redis+sentinel://[:password@]h1:26379,h2:26379/<service>/<db>``
  (``rediss+sentinel://`` for TLS) -> ``Sentinel(...).master_for(service)``,
  whose connections ask the sentinels for the master on every (re)connect, so
  a client follows a failover by itself;
- Cluster: ``redis+cluster://[:password@]h1:7000,h2:7001/`` (``rediss+cluster://``
  for TLS) -> ``RedisCluster``, which routes each command to its slot's master.

The password in the URL is the data nodes' one; the sentinels get the same,
unless ``?sentinel_password=`` names theirs (``sentinel_password=`` empty:
sentinels without a password).
"""

import logging
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.connection import Encoder
from redis.exceptions import RedisClusterException
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

logger = logging.getLogger(__name__)

SINGLE, SENTINEL, CLUSTER = "single", "sentinel", "cluster"
SCHEMES = {
    "redis+sentinel": (SENTINEL, False),
    "rediss+sentinel": (SENTINEL, True),
    "redis+cluster": (CLUSTER, False),
    "rediss+cluster": (CLUSTER, True),
}


@dataclass(frozen=True)
class Topology:
    kind: str
    url: str
    hosts: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = None
    tls: bool = False
    service: str = ""
    db: int = 0
    sentinel_password: str | None = None


def parse(url):
    """The Topology of ``url``; ValueError saying what is wrong with it."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        return Topology(SINGLE, url)
    kind, tls = SCHEMES[scheme]
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    hosts = tuple(_host_port(h, url) for h in hostlist.split(",") if h.strip())
    if not hosts:
        raise ValueError(f"{scheme}:// URL names no host: give host:port[,host:port...]")
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    service, db = "", 0
    path = [p for p in parts.path.split("/") if p]
    if kind == SENTINEL:
        if not path:
            raise ValueError(
                "redis+sentinel:// URL names no service: use redis+sentinel://h1:26379,h2:26379/<service>/<db>"
            )
        service = unquote(path[0])
        if len(path) > 1:
            if not path[1].isdigit():
                raise ValueError(f"redis+sentinel:// database must be a number, not {path[1]!r}")
            db = int(path[1])
        if len(path) > 2:
            raise ValueError("redis+sentinel:// URL has more than /<service>/<db> in its path")
    elif path and path != ["0"]:
        raise ValueError("redis+cluster:// has database 0 only (Redis Cluster has no SELECT): end the URL with /")
    password = unquote(password) if password else None
    sentinel_password = query.pop("sentinel_password", None)
    if sentinel_password is None:
        sentinel_password = password
    if query:
        raise ValueError(f"{scheme}:// URL: unknown option(s) {', '.join(sorted(query))} (known: sentinel_password)")
    return Topology(
        kind,
        url,
        hosts,
        unquote(username) or None,
        password,
        tls,
        service,
        db,
        sentinel_password or None,
    )


def _host_port(text, url):
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"{text!r} in the Redis URL is not host:port")
    return host.strip("[]"), int(port)


def make_client(topology, **options):
    """A redis-py client for ``topology``; ``options`` are connection keyword arguments."""
    if topology.kind == SINGLE:
        return redis.Redis.from_url(topology.url, **options)
    auth = {"username": topology.username, "password": topology.password, "ssl": topology.tls}
    if topology.kind == SENTINEL:
        sentinel_options = {
            k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout", "retry")
        }
        sentinel = Sentinel(
            list(topology.hosts),
            sentinel_kwargs={**sentinel_options, "password": topology.sentinel_password, "ssl": topology.tls},
            **sentinel_options,
        )
        return sentinel.master_for(
            topology.service, db=topology.db, connection_pool_class=FollowingSentinelPool, **auth, **options
        )
    return LazyCluster(
        lambda: RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in topology.hosts], **auth, **options)
    )


class FollowingSentinelPool(SentinelConnectionPool):
    """Leaves an old master within a second of the sentinels naming a new one.

    redis-py asks the sentinels only when it opens a connection. After a
    SENTINEL FAILOVER the old master stays up and writable until the
    sentinels demote it, about ten seconds later, and pooled connections
    would go on using it: a worker would take, run and acknowledge tasks on
    a server whose data is then thrown away, while the others work on the
    new one. So at most once a second, before handing out a connection, the
    pool asks the sentinels; when the master moved, redis-py's own
    bookkeeping drops the idle connections at once and the busy ones when
    they come back (SentinelConnectionPool.owns_connection).
    """

    CHECK_SECONDS = 1.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._next_check = 0.0

    def get_connection(self, *args, **kwargs):
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.CHECK_SECONDS
            before = self.master_address
            try:
                after = self.get_master_address()
            except MasterNotFoundError:
                pass  # the connection's own connect reports it, the caller rides it out
            else:
                if before is not None and tuple(after) != tuple(before):
                    # A move may be silent otherwise: no command ever failed.
                    logger.warning(
                        "event=master_moved service=%s from=%s:%s to=%s:%s", self.service_name, *before, *after
                    )
        connection = super().get_connection(*args, **kwargs)
        if connection.host and self.master_address and (connection.host, connection.port) != self.master_address:
            connection.disconnect()  # connected to the old master: the next command reconnects to the new one
        return connection


class LazyCluster:
    """A RedisCluster made on first use, and made again on the next use
    while that fails.

    RedisCluster asks a node for the slot map in its constructor, so a
    worker or listener started while the cluster is down would crash where,
    on one server, it waits for Redis to answer. Here the failure surfaces
    as a ConnectionError on the first command instead, which every caller
    already rides out. Everything else is the RedisCluster's own.
    """

    def __init__(self, factory):
        self._factory = factory
        self._client = None

    @property
    def cluster(self):
        if self._client is None:
            try:
                self._client = self._factory()
            except RedisClusterException as exc:
                raise redis.ConnectionError(str(exc)) from exc
        return self._client

    def __getattr__(self, name):
        return getattr(self.cluster, name)

    # A queue registers its scripts when it is made, before any command:
    # neither may connect. Scripts are encoded as RedisCluster does by default.
    def register_script(self, script):
        return Script(self, script)  # type: ignore[arg-type]  # it quacks like the RedisCluster it becomes

    def get_encoder(self):
        return Encoder(encoding="utf-8", encoding_errors="strict", decode_responses=False)

    def close(self):
        if self._client is not None:
            self._client.close()


def is_cluster(client):
    return isinstance(client, (RedisCluster, LazyCluster))


def current_master(client):
    """Where writes go now, as text: "host:port" of the one server or the
    Sentinel-managed master, or the cluster's masters joined by commas. It
    asks the sentinels (or the cluster) afresh, so after a failover it names
    the new master. Raises RedisError when nobody answers."""
    if is_cluster(client):
        client.nodes_manager.initialize()
        return ",".join(sorted(node.name for node in client.get_primaries()))
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        host, port = pool.get_master_address()  # asks the sentinels, and follows a move
        return f"{host}:{port}"
    kwargs = pool.connection_kwargs
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def kind_of(client):
    if is_cluster(client):
        return CLUSTER
    return SENTINEL if isinstance(client.connection_pool, SentinelConnectionPool) else SINGLE
