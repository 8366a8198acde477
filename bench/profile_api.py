"""cProfile of POST /api/tasks in one process, through the whole middleware stack.

    REDIS_URL=redis://127.0.0.1:PORT/0 DATABASE_URL=sqlite:////tmp/prof.sqlite3 \\
        .venv/bin/python bench/profile_api.py [N] [tottime|cumulative]

Production settings (DEBUG off), a scratch database it migrates, the Redis
you name (never one that matters: it fills the default queue). Prints the
rate and the top of the profile; see deploy/gunicorn.conf.py for what it
showed.
"""

import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.update(
    DJANGO_SETTINGS_MODULE="mqsite.settings",
    DJANGO_DEBUG="0",
    DJANGO_SECURE_SSL_REDIRECT="0",
    DJANGO_SECRET_KEY="profile-only-" + "x" * 50,
    MQ_API_TOKENS="bench:bench-token",
)
import django  # noqa: E402

django.setup()
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402

count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
order = sys.argv[2] if len(sys.argv) > 2 else "cumulative"
call_command("migrate", verbosity=0)
client = Client(HTTP_AUTHORIZATION="Bearer bench-token", HTTP_HOST="127.0.0.1")
body = '{"task": "tasks.tasks.cook_dish", "args": [5]}'
for _ in range(200):  # warm-up: imports, connections, the script loaded into Redis
    assert client.post("/api/tasks", body, content_type="application/json").status_code == 202
profile = cProfile.Profile()
started = time.perf_counter()
profile.enable()
for _ in range(count):
    client.post("/api/tasks", body, content_type="application/json")
profile.disable()
elapsed = time.perf_counter() - started
print(f"{count / elapsed:.0f} req/s in one process, {elapsed / count * 1000:.2f} ms a request (with the profiler on)")
pstats.Stats(profile).sort_stats(order).print_stats(40)
