"""The site's pages and JSON API (the admin is wired in mqsite/urls.py).

Paths have no trailing slash, as the design's table lists them; /healthz
and /metrics also match SECURE_REDIRECT_EXEMPT so probes may use plain HTTP.
"""

from django.urls import path, re_path

from tasks.web import api
from tasks.web import dashboard
from tasks.web import metrics
from tasks.web import taskpage
from tasks.web import views

app_name = "tasks"

urlpatterns = [
    path("", dashboard.index, name="index"),
    path("dead-letters/requeue", dashboard.requeue_dead_letter, name="requeue-dead-letter"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("prodcons", views.prodcons, name="prodcons"),
    path("pubsub", views.pubsub_page, name="pubsub"),
    path("tasks/<str:task_id>", taskpage.task_page, name="task"),
    path("tasks/<str:task_id>/status", taskpage.task_status, name="task-status"),
    path("api/tasks", api.tasks_collection, name="api-tasks"),
    path("api/tasks/<str:task_id>", api.task_detail, name="api-task"),
    path("api/tasks/<str:task_id>/cancel", api.cancel_task, name="api-task-cancel"),
    path("api/messages", api.publish_message, name="api-messages"),
    path("api/stats", api.stats, name="api-stats"),
    path("healthz", api.healthz, name="healthz"),
    path("metrics", metrics.metrics, name="metrics"),
    # Last: any other path under api/ answers a JSON 404.
    re_path(r"^api/", api.not_found, name="api-not-found"),
]
