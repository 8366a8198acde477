"""The seed's web side, as it was: POST /prodcons pushes the form's number onto
the Redis list and redirects. No row, no token, no CSRF: the baseline mqsite's
POST /api/tasks is compared with (bench/web.py). Runs from the bench venv,
which has Flask; Flask is never a dependency of mqsite.

    gunicorn -c deploy/gunicorn.conf.py --chdir bench seed_flask:app   (REDIS_URL set)
"""

import os

import redis
from flask import Flask, redirect, request

app = Flask(__name__)
client = redis.Redis.from_url(os.environ["REDIS_URL"])


@app.post("/prodcons")
def prodcons():
    client.lpush("task:prodcons:queue", request.form.get("number", "1"))
    return redirect("/prodcons", code=303)
