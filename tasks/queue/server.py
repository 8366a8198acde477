"""The Redis server as the read side sees it, beyond any one queue: whether
it answers, who is running, who subscribes to which channel, and settings
that could lose work.

Protocol: it knows Redis and nothing of the ORM or HTTP. The read model
(tasks/web/status.py) and /healthz ask here, so no view drives a client.
"""

from redis.exceptions import ResponseError

from tasks.conf import mq_settings
from tasks.queue import presence, topology
from tasks.queue.connection import get_redis
from tasks.storable import as_text


class Server:
    def __init__(self, client=None):
        self.client = client or get_redis()

    def ping(self):
        return self.client.ping()

    def workers(self):
        return presence.active(self.client, "worker")

    def listeners(self):
        return presence.active(self.client, "listener")

    def channel_subscribers(self, listeners):
        """Redis's own PUBSUB NUMSUB for the default channel and every channel a
        listener announces: it counts every subscriber, mqsite's or not, and
        shows a listener that is registered but not actually subscribed."""
        names = [mq_settings.MQ_DEFAULT_CHANNEL, *(c for listener in listeners for c in listener.get("channels", []))]
        names = list(dict.fromkeys(names))
        if topology.is_cluster(self.client):
            # Sharded channels: each counted on its own slot's master.
            return {
                as_text(name): count
                for name in names
                for _, count in self.client.pubsub_shardnumsub(name, target_nodes=self.client.get_node_from_key(name))
            }
        return {as_text(name): count for name, count in self.client.pubsub_numsub(*names)}

    def topology(self):
        """{"kind": single|sentinel|cluster, "master": where writes go now}."""
        return {"kind": topology.kind_of(self.client), "master": topology.current_master(self.client)}

    def warnings(self):
        return server_warnings(self.client)


def server_warnings(client):
    """Server settings that could silently drop queued tasks."""
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy", "noeviction")
    except ResponseError:  # CONFIG is disabled on some managed services
        return []
    # volatile-* policies evict only keys with a TTL, but worker leases have
    # one: an evicted lease makes a live worker's tasks run a second time.
    if policy != "noeviction":
        return [f"Redis maxmemory-policy is {policy!r}: under memory pressure it may evict queue keys or leases. Use noeviction."]
    return []
