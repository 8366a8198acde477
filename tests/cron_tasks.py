"""A task scheduled with the decorator form, imported only by the test of
that form (tests/test_schedules.py), so no other test's workers see it."""

from tasks.compat import task
from tasks.schedules import cron


@cron("*/5 * * * *", catch_up="all", args=[1])
@task
def every_five(value):
    return value
