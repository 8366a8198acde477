"""Each system check reports its own stable id for the value it guards
(README, "Configuration", lists them)."""

import re
from pathlib import Path

import pytest
from django.core.checks import run_checks

from tasks import checks

pytestmark = pytest.mark.no_redis

README = Path(__file__).resolve().parents[2] / "README.md"

# (settings, the id that must be reported)
BROKEN = [
    ({"MQ_REDIS_URL": "http://localhost:6379"}, "mqsite.E001"),
    ({"MQ_REDIS_URL": 6379}, "mqsite.E001"),
    ({"MQ_REDIS_URL": "redis+sentinel://h1:26379,h2:26379"}, "mqsite.E001"),  # no service
    ({"MQ_REDIS_URL": "redis+sentinel://h1:26379/mymaster/zero"}, "mqsite.E001"),
    ({"MQ_REDIS_URL": "redis+cluster://h1:7000,h2/"}, "mqsite.E001"),  # a host without a port
    ({"MQ_REDIS_URL": "redis+cluster://h1:7000/3"}, "mqsite.E001"),  # a cluster has database 0 only
    ({"MQ_REDIS_URL": "redis+cluster://h1:7000/?tls=1"}, "mqsite.E001"),  # unknown option
    ({"MQ_SOCKET_TIMEOUT": "5"}, "mqsite.E002"),
    ({"MQ_BLOCK_SECONDS": 0}, "mqsite.E003"),
    ({"MQ_BLOCK_SECONDS": 3.0, "MQ_SOCKET_TIMEOUT": 3.0}, "mqsite.E004"),
    ({"MQ_QUEUES": {"default": ""}}, "mqsite.E005"),
    ({"MQ_QUEUES": ["default"]}, "mqsite.E005"),
    ({"MQ_TASK_MODULES": "tests.fixture_tasks"}, "mqsite.E006"),
    ({"MQ_RAW_MESSAGE_TASKS": {"default": 5}}, "mqsite.E007"),
    ({"MQ_RAW_MESSAGE_TASKS": {"default": "os.system"}}, "mqsite.E008"),
    ({"MQ_MAX_MESSAGE_BYTES": 1.5e6}, "mqsite.E009"),
    ({"MQ_MAX_ATTEMPTS": 0}, "mqsite.E010"),
    ({"MQ_RETRY_BASE_SECONDS": -1}, "mqsite.E011"),
    ({"MQ_RETRY_MAX_SECONDS": None}, "mqsite.E012"),
    ({"MQ_TASK_TIME_LIMIT": 0}, "mqsite.E013"),
    ({"MQ_TASK_OPTIONS": {"tasks.tasks.add": {"max_attempts": 0}}}, "mqsite.E014"),
    ({"MQ_TASK_OPTIONS": {"tasks.tasks.add": {"retries": 2}}}, "mqsite.E014"),
    ({"MQ_TASK_OPTIONS": {"tasks.tasks.add": 5}}, "mqsite.E014"),
    ({"MQ_TASK_OPTIONS": {"tasks.tasks.add": {"unique": "yes"}}}, "mqsite.E014"),
    ({"MQ_LEASE_SECONDS": 0}, "mqsite.E015"),
    ({"MQ_MAX_BATCH": True}, "mqsite.E016"),
    ({"MQ_BATCH_TARGET_SECONDS": -0.5}, "mqsite.E017"),
    ({"MQ_SWEEP_GRACE_SECONDS": "60"}, "mqsite.E018"),
    ({"MQ_SWEEP_INTERVAL_SECONDS": 0}, "mqsite.E019"),
    ({"MQ_QUEUE_MAX_LENGTH": 0}, "mqsite.E020"),
    ({"MQ_DEAD_LETTER_MAX": 0}, "mqsite.E021"),
    ({"MQ_API_TOKENS": ["name:"]}, "mqsite.E022"),
    ({"MQ_API_TOKENS": "secret"}, "mqsite.E022"),
    ({"MQ_API_MAX_BODY_BYTES": 1}, "mqsite.E023"),
    ({"MQ_RETRY_AFTER_SECONDS": 2.5}, "mqsite.E024"),
    ({"MQ_METRICS_ALLOW": ["localhost"]}, "mqsite.E025"),
    ({"MQ_METRICS_ALLOW": "127.0.0.0/8"}, "mqsite.E025"),
    ({"MQ_DEFAULT_CHANNEL": " "}, "mqsite.E026"),
    ({"MQ_CHANNEL_HANDLERS": {"news": None}}, "mqsite.E027"),
    ({"MQ_CHANNEL_HANDLERS": {"news": "tasks.channel.handlers.no_such_handler"}}, "mqsite.E028"),
    ({"MQ_DEFAULT_CHANNEL_HANDLER": "no_such_module.handle"}, "mqsite.E029"),
    ({"MQ_QUEUES": {"default": "jobs:{eu}:queue"}}, "mqsite.E030"),
    (
        {"MQ_REDIS_URL": "redis+cluster://h1:7000/", "MQ_CHANNEL_HANDLERS": {"news:*": "tasks.channel.handlers.log_message"}},
        "mqsite.E031",
    ),
    ({"MQ_WORKER_CONCURRENCY": 0}, "mqsite.E032"),
    ({"MQ_WORKER_CONCURRENCY": "8"}, "mqsite.E032"),
    ({"MQ_WORKER_CONCURRENCY": 2.5}, "mqsite.E032"),
]

FINE = [
    {"MQ_REDIS_URL": ""},
    {"MQ_REDIS_URL": "unix:///run/redis.sock"},
    {"MQ_REDIS_URL": "redis+sentinel://:secret@h1:26379,[::1]:26380/mymaster/2?sentinel_password="},
    {"MQ_REDIS_URL": "rediss+cluster://default:secret@h1:7000,h2:7001/"},
    # Patterns are fine off a cluster.
    {"MQ_REDIS_URL": "redis+sentinel://h1:26379/mymaster", "MQ_CHANNEL_HANDLERS": {"news:*": "tasks.channel.handlers.log_message"}},
    {"MQ_TASK_TIME_LIMIT": None, "MQ_QUEUE_MAX_LENGTH": None},
    {"MQ_TASK_OPTIONS": {"tasks.tasks.add": {"max_attempts": 5, "time_limit": None}}},
    {"MQ_API_TOKENS": ["bare-secret", "name:secret"]},
    {"MQ_METRICS_ALLOW": []},
    {"MQ_CHANNEL_HANDLERS": {"news:*": "tasks.channel.handlers.log_message"}},
]


def ids(tags=("mqsite",), deploy=False):
    return [message.id for message in run_checks(tags=list(tags), include_deployment_checks=deploy)]


def test_the_test_settings_pass():
    assert ids() == []


@pytest.mark.parametrize("overrides, check_id", BROKEN, ids=[f"{i}-{next(iter(o))}" for o, i in BROKEN])
def test_each_broken_setting_reports_its_id(settings, overrides, check_id):
    for name, value in overrides.items():
        setattr(settings, name, value)

    assert ids() == [check_id]


@pytest.mark.parametrize("overrides", FINE)
def test_valid_values_pass(settings, overrides):
    for name, value in overrides.items():
        setattr(settings, name, value)

    assert ids() == []


def test_no_api_token_is_a_deploy_warning(settings):
    settings.MQ_API_TOKENS = []

    assert ids() == []
    assert ids(deploy=True) == ["mqsite.W001"]


def test_fault_injection_is_a_deploy_warning(settings):
    settings.MQ_FAULT = "after_run"

    assert ids() == []
    assert ids(deploy=True) == ["mqsite.W003"]


def test_redis_eviction_policy_is_a_deploy_warning(redis_server, redis_client, settings):
    settings.MQ_REDIS_URL = redis_server.url
    redis_client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        assert ids(tags=["mqsite_redis"], deploy=True) == ["mqsite.W002"]
    finally:
        redis_client.config_set("maxmemory-policy", "noeviction")


def test_an_unreachable_redis_is_only_noted(settings):
    settings.MQ_REDIS_URL = "redis://127.0.0.1:1/0"

    assert ids(tags=["mqsite_redis"], deploy=True) == ["mqsite.I001"]


def test_every_id_is_tested_and_documented():
    source = Path(checks.__file__).read_text()
    defined = set(re.findall(r'"(mqsite\.[EWI]\d{3})"', source))
    tested = {check_id for _, check_id in BROKEN} | {"mqsite.W001", "mqsite.W002", "mqsite.W003", "mqsite.I001"}
    documented = set(re.findall(r"^\| `(mqsite\.[EWI]\d{3})` \|", README.read_text(), re.MULTILINE))

    assert defined == tested == documented
