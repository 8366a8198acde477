"""Any local user can reach a loopback port. The suite's Redis server, like
the one `make run` starts (tests/test_launcher.py), answers only clients that
give its generated password: nobody else can push an envelope to a worker."""

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

pytestmark = [pytest.mark.faults]

QUEUE = "task:prodcons:queue"


def refuses_strangers(server):
    # No retries: redis-py counts a refused login as a connection error and
    # would try again, with backoff, for seconds.
    stranger = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    try:
        with pytest.raises(redis.AuthenticationError):
            stranger.lpush(QUEUE, '{"id": "x", "task": "tasks.tasks.add", "args": [1, 2]}')
        with pytest.raises(redis.AuthenticationError):
            stranger.ping()
    finally:
        stranger.close()


def test_the_suites_redis_refuses_clients_without_its_password(redis_server, redis_client):
    refuses_strangers(redis_server)
    assert ":" + redis_server.password + "@" in redis_server.url
    assert redis_client.llen(QUEUE) == 0


@pytest.mark.no_redis
def test_a_restarted_server_keeps_its_password(redis_server):
    redis_server.restart()
    refuses_strangers(redis_server)
    assert redis.Redis.from_url(redis_server.url).ping()


def test_the_password_is_not_on_the_servers_command_line(redis_server):
    """/proc/<pid>/cmdline is readable by every local user."""
    with open(f"/proc/{redis_server.process.pid}/cmdline", "rb") as handle:
        argv = handle.read().decode()
    assert redis_server.password not in argv
