from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "Task queue"

    def ready(self):
        from . import checks, registry  # noqa: F401  (checks register themselves)
        from . import schedule_checks  # noqa: F401  issue 10 hook: periodic tasks' checks

        registry.autodiscover()
