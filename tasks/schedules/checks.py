"""`manage.py check` errors for periodic tasks (MQ_SCHEDULES and @cron).

A schedule that cannot fire is an error at deploy time, not a line in a
worker's log at three in the morning.
"""

from django.core.checks import Error, register

from tasks.conf import mq_settings
from tasks.schedules import declared, problems


@register("mqsite")
def check_schedules(app_configs, **kwargs):
    configured = mq_settings.MQ_SCHEDULES
    if not isinstance(configured, dict) or not all(isinstance(spec, dict) for spec in configured.values()):
        return [Error("MQ_SCHEDULES must map schedule names to dicts with 'task' and 'cron'.", id="mqsite.E100")]
    return [
        Error(f"Schedule {name!r}: {message}.", id=check_id)
        for name, schedule in declared().items()
        for check_id, message in problems(schedule)
    ]
