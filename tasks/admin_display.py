"""What more than one admin page shows the same way: tasks/admin.py's lists
and the Schedules page (tasks/schedules/admin.py), which tasks/admin.py
registers, so neither imports the other for it."""

from django.utils.html import format_html

from tasks.models import TaskStatus


def status_badge_html(status):
    """A task status as the lists show it: a coloured badge (tasks/static/tasks/admin.css)
    with the status's label in the reader's language. The task list and the
    Schedules page's last outcome share it."""
    label = TaskStatus(status).label if status in TaskStatus.values else status
    return format_html('<span class="mq-status mq-status-{}">{}</span>', status.lower(), label)
