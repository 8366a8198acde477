"""mq_settings: a default for every setting, read on each access."""

import pytest
from django.conf import settings as django_settings
from django.test import override_settings

from tasks.conf import SETTING_NAMES, mq_settings

pytestmark = pytest.mark.no_redis


def test_every_setting_has_a_default():
    missing = [name for name in SETTING_NAMES if hasattr(django_settings, name)]
    with override_settings():
        for name in missing:
            delattr(django_settings, name)
        defaults = {name: getattr(mq_settings, name) for name in SETTING_NAMES}
    assert defaults["MQ_QUEUES"] == {"default": "task:prodcons:queue"}
    assert (defaults["MQ_MAX_ATTEMPTS"], defaults["MQ_TASK_TIME_LIMIT"], defaults["MQ_LEASE_SECONDS"]) == (3, 300, 10.0)
    assert defaults["MQ_DEFAULT_CHANNEL"] == "task:pubsub:channel"


def test_override_settings_is_seen_at_once():
    with override_settings(MQ_MAX_BATCH=7):
        assert mq_settings.MQ_MAX_BATCH == 7
    assert mq_settings.MQ_MAX_BATCH == 200


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError):
        mq_settings.MQ_NO_SUCH_SETTING


@override_settings(MQ_QUEUES={"default": "task:prodcons:queue", "slow": "custom:slow"})
def test_queue_key_maps_listed_names_and_prefixes_others():
    assert [mq_settings.queue_key(name) for name in ("default", "slow", "other")] == [
        "task:prodcons:queue",
        "custom:slow",
        "mq:queue:other",
    ]


@override_settings(MQ_MAX_ATTEMPTS=4, MQ_TASK_TIME_LIMIT=60, MQ_TASK_OPTIONS={"app.tasks.job": {"time_limit": None}})
def test_task_option_prefers_the_tasks_own_value():
    assert mq_settings.task_option("app.tasks.job", "time_limit") is None
    assert mq_settings.task_option("app.tasks.job", "max_attempts") == 4
    assert mq_settings.task_option("app.tasks.other", "time_limit") == 60


@override_settings(MQ_API_TOKENS=["ci:s3cret", "bare", "odd:with:colons"])
def test_api_tokens_map_secret_to_name():
    assert mq_settings.api_tokens() == {"s3cret": "ci", "bare": "token2", "with:colons": "odd"}
