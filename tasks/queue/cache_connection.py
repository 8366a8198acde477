"""django-redis's connections, made by tasks/queue/connection.py.

django-redis parses LOCATION itself and knows neither mqsite's Sentinel nor
its Cluster URL (it even splits a LOCATION at commas into several servers).
This factory hands it the client get_redis() made for REDIS_URL instead, so
the cache follows a failover like everything else, and the one client's
pool serves both. Set as CACHES["default"]["OPTIONS"]["CONNECTION_FACTORY"].
"""

from django_redis.pool import ConnectionFactory  # type: ignore[import-untyped]  # no stubs

from tasks.queue.connection import get_redis


class MqConnectionFactory(ConnectionFactory):
    def connect(self, url):
        return get_redis()

    def disconnect(self, connection):
        """The client is shared with the queue; it is not the cache's to close."""
