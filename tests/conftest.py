import pytest

from tasks.queue.connection import reset_clients
from tests.redis_server import RedisServer

# Fixtures shared by several test modules.
pytest_plugins = ["tests.outage"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real Redis server for the session, on a free loopback port."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


@pytest.fixture(autouse=True)
def redis_url(request, settings):
    """Point mqsite at the suite's server, emptied before each test."""
    if "no_redis" in request.keywords:
        yield None
        return
    server = request.getfixturevalue("redis_server")
    if server.process is None:
        server.start()
    server.client().flushall()
    settings.MQ_REDIS_URL = server.url
    reset_clients()
    yield server.url
    reset_clients()


@pytest.fixture
def redis_client(redis_server):
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture
def subscriber(redis_client):
    """A plain redis-py subscriber on the default channel, subscribed for sure."""
    pubsub = redis_client.pubsub()
    pubsub.subscribe("task:pubsub:channel")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    yield pubsub
    pubsub.close()


def nested(depth):
    """``depth`` lists, one inside the other: arguments too deep to store."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value
