"""Redis clients configured from settings, one pool per process and URL.

redis-py retries connection errors ten times with backoff by default. That
would turn "Redis is down" into a request hanging for many seconds, and a
silently retried BLMOVE may move a second item while the reply to the first
was lost. So mqsite's clients retry at most once, without waiting, and the
worker handles connection errors itself (see Worker.run).

This is the one place clients are made, for every topology
(tasks/queue/topology.py): queue, channel, presence, cache and figures all
come through here, so a Sentinel or Cluster URL serves them all.
"""

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tasks.conf import mq_settings
from tasks.exceptions import RedisNotConfigured
from tasks.queue import topology

NO_REDIS = "no Redis: set REDIS_URL or start `make run`"

_clients: dict[tuple[str, float, int], redis.Redis] = {}
_topologies: dict[str, topology.Topology] = {}


def redis_url(url=None):
    """The URL to connect to; RedisNotConfigured when the project names none."""
    url = url or mq_settings.MQ_REDIS_URL
    if not url:
        raise RedisNotConfigured(NO_REDIS)
    return url


def get_redis(url=None, *, retries=1):
    url = redis_url(url)
    timeout = mq_settings.MQ_SOCKET_TIMEOUT
    cache_key = (url, timeout, retries)
    client = _clients.get(cache_key)
    if client is None:
        client = topology.make_client(
            topology_of(url),
            socket_timeout=timeout,
            socket_connect_timeout=min(timeout, 2.0),
            health_check_interval=10,
            # Retry connection errors only: they mean a stale pooled socket, and
            # the command never reached Redis. After a timeout Redis may still
            # run it (a frozen server resumes), and running a push twice would
            # queue a task twice.
            retry=Retry(NoBackoff(), retries, supported_errors=(redis.ConnectionError,)),
        )
        _clients[cache_key] = client
    return client


def topology_of(url=None):
    """The parsed topology of ``url`` (or the configured one); ValueError when malformed."""
    url = redis_url(url)
    if url not in _topologies:
        _topologies[url] = topology.parse(url)
    return _topologies[url]


def subscriber_client(url=None):
    """A client whose connections serve one subscription each.

    redis-py would otherwise reconnect a failed pub/sub connection behind our
    back (re-subscribing on its own) and send health-check PINGs whose replies
    it hides. Here every error reaches the caller, which owns reconnecting
    (tasks/channel/subscription.py). Not cached: the caller owns and closes it.
    """
    timeout = mq_settings.MQ_SOCKET_TIMEOUT
    return topology.make_client(
        topology_of(url),
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 2.0),
        health_check_interval=0,
        retry=Retry(NoBackoff(), 0, supported_errors=()),
    )


def reset_clients():
    """Forget cached clients (after a fork, or when tests move the server)."""
    for client in _clients.values():
        client.close()
    _clients.clear()
    _topologies.clear()
