"""Settings for the test suite and for the worker processes it starts.

Tests start workers with DJANGO_SETTINGS_MODULE=tests.settings and may pass
overrides as JSON in MQ_TEST_SETTINGS. MQ_FAULT (fault injection) is read
here only: production settings never define it.
"""

import json
import os

from mqsite.settings import *  # noqa: F403

MQ_FAULT = os.environ.get("MQ_FAULT", "")
# Only the Redis a test names: never the one a `make run` in this checkout
# may have running (mqsite/settings.py would find it).
MQ_REDIS_URL = os.environ.get("REDIS_URL", "")
MQ_API_TOKENS = ["tests:test-token", "other:second-token"]
# Tasks that write files, kill or stall workers: registered here only, never
# by the production settings.
MQ_TASK_MODULES = ["tests.fixture_tasks", "tests.faults.fault_tasks"]
# Short periods so recovery, retries and sweeps happen within a test's patience.
MQ_LEASE_SECONDS = 2.0
MQ_RETRY_BASE_SECONDS = 0.05
MQ_RETRY_MAX_SECONDS = 0.5
MQ_SWEEP_GRACE_SECONDS = 30.0
MQ_SWEEP_INTERVAL_SECONDS = 1.0
MQ_BLOCK_SECONDS = 0.5
MQ_SOCKET_TIMEOUT = 3.0
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

globals().update(json.loads(os.environ.get("MQ_TEST_SETTINGS", "{}")))
