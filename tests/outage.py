"""Redis unreachable for one test, without touching the suite's server: mqsite
is pointed at a closed loopback port. Import the fixture into a test module,
or call cut_off_redis() midway through a test."""

import pytest

from tasks.queue.connection import reset_clients
from tests.redis_server import free_port


def cut_off_redis(settings):
    settings.MQ_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    reset_clients()


@pytest.fixture
def redis_down(settings):
    cut_off_redis(settings)
    yield
    reset_clients()
