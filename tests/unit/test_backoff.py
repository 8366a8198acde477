"""The one backoff formula: doubling from a base, capped, jitter in the upper half."""

import pytest

from tasks.backoff import backoff_delay

pytestmark = pytest.mark.no_redis


def test_doubles_from_the_base_up_to_the_cap():
    assert [backoff_delay(n, 0.1, 1.0) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_jitter_stays_in_the_upper_half_of_the_nominal_delay():
    delays = [backoff_delay(3, 0.1, 5.0, jitter=True) for _ in range(200)]
    assert all(0.4 <= delay <= 0.8 for delay in delays)
    assert len(set(delays)) > 1


def test_a_huge_count_of_failures_waits_the_cap_instead_of_overflowing():
    assert backoff_delay(10**6, 0.1, 5.0) == 5.0
