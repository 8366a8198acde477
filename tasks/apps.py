from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = _("Task queue")

    def ready(self):
        from . import checks, registry  # noqa: F401  (checks register themselves)
        from tasks.schedules import checks as schedule_checks  # noqa: F401

        registry.autodiscover()
