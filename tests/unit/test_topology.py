"""REDIS_URL forms for the three topologies (tasks/queue/topology.py), parsed
without a server: what each part means, and a clear error for each mistake."""

import pytest
from redis.exceptions import ConnectionError
from redis.sentinel import SentinelConnectionPool

from tasks.queue import topology

pytestmark = pytest.mark.no_redis


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database():
    t = topology.parse("redis+sentinel://:s%40cret@h1:26379,h2:26380/mymaster/2")
    assert (t.kind, t.hosts, t.service, t.db, t.tls) == (
        "sentinel",
        (("h1", 26379), ("h2", 26380)),
        "mymaster",
        2,
        False,
    )
    # The sentinels take the data nodes' password unless told otherwise.
    assert t.password == t.sentinel_password == "s@cret"


def test_the_sentinels_may_have_a_password_of_their_own_or_none():
    assert topology.parse("redis+sentinel://:a@h:1/m?sentinel_password=b").sentinel_password == "b"
    assert topology.parse("redis+sentinel://:a@h:1/m?sentinel_password=").sentinel_password is None


def test_tls_and_ipv6_and_a_user_name():
    t = topology.parse("rediss+cluster://app:pw@[::1]:7000,10.0.0.2:7001/")
    assert (t.kind, t.tls, t.username, t.password, t.hosts) == (
        "cluster",
        True,
        "app",
        "pw",
        (("::1", 7000), ("10.0.0.2", 7001)),
    )


def test_a_single_server_url_is_left_to_redis_py():
    assert topology.parse("redis://:pw@localhost:6380/3") == topology.Topology("single", "redis://:pw@localhost:6380/3")


@pytest.mark.parametrize(
    "url, message",
    [
        ("redis+sentinel://h1:26379", "names no service"),
        ("redis+sentinel:///mymaster", "names no host"),
        ("redis+sentinel://h1:26379/m/x", "database must be a number"),
        ("redis+sentinel://h1:26379/m/0/extra", "more than /<service>/<db>"),
        ("redis+cluster://h1/", "is not host:port"),
        ("redis+cluster://h1:7000/1", "database 0 only"),
        ("redis+cluster://h1:7000/?ssl=true", "unknown option(s) ssl"),
    ],
)
def test_mistakes_are_named(url, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        topology.parse(url)


def test_a_sentinel_client_asks_the_sentinels_and_connects_to_nobody_yet():
    client = topology.make_client(topology.parse("redis+sentinel://:pw@127.0.0.1:1/mymaster/4"), socket_timeout=1)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 4 and pool.connection_kwargs["password"] == "pw"
    assert topology.kind_of(client) == "sentinel"


def test_a_cluster_client_is_made_on_first_use():
    client = topology.make_client(
        topology.parse("redis+cluster://127.0.0.1:1/"), socket_timeout=0.2, socket_connect_timeout=0.2
    )
    assert topology.is_cluster(client) and topology.kind_of(client) == "cluster"
    client.register_script("return 1")  # a queue registers its scripts before any command
    # A ConnectionError, which workers and listeners ride out, not a crash.
    with pytest.raises(ConnectionError, match="Redis Cluster cannot be connected"):
        client.ping()
