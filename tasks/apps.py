from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "Task queue"

    def ready(self):
        from . import checks, registry  # noqa: F401  (checks register themselves)
        from tasks.schedules import checks as schedule_checks  # noqa: F401

        registry.autodiscover()
