"""A plain Django 6 site whose one view enqueues through Huey's own backend
for Django's Tasks framework (huey.contrib.djhuey.tasks_backend.HueyBackend).
It is the "plain Django view with Huey" row of bench/web.py; no database."""

import os

from huey import RedisHuey

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "huey_site.urls"
INSTALLED_APPS = ["huey.contrib.djhuey"]
MIDDLEWARE: list[str] = []
DATABASES: dict = {}
USE_TZ = True
HUEY = RedisHuey("bench", url=os.environ["REDIS_URL"], immediate=False)
TASKS = {"default": {"BACKEND": "huey.contrib.djhuey.tasks_backend.HueyBackend"}}
