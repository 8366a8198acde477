"""gunicorn settings for mqsite in production (deploy/systemd/mqsite-web.service).

Values that differ between hosts come from the environment, i.e. from
/etc/mqsite/mqsite.env, so the unit file never needs editing.
"""

import os

# Loopback only: a reverse proxy on the same host terminates TLS and faces
# the network. Several addresses may be given, comma separated.
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000").split(",")

# Sync workers, two per core plus one (gunicorn's rule of thumb), at most 8:
# each holds a database connection (CONN_MAX_AGE). Measured with
# `bench/web.py --variants` (2 vCPUs, wrk on the same host, POST /api/tasks,
# medians of 3 rounds, two runs):
# - 2 against 4 workers: within the noise (SQLite 959 and 724 req/s against
#   729 and 805; PostgreSQL 642 against 703). 8: slower on SQLite (583
#   against 729), split on PostgreSQL (483 against 703, then 460 against 427).
#   No count won clearly, so the rule of thumb stays.
# - gthread, 4 workers x 4 threads (which also keeps connections alive): no
#   faster (SQLite 923, PostgreSQL 598 req/s) and a p99 of ~70 ms against
#   ~25 ms: a request is mostly Python, and threads take turns on the GIL.
# GUNICORN_WORKERS, GUNICORN_WORKER_CLASS and GUNICORN_THREADS override it.
workers = int(os.environ.get("GUNICORN_WORKERS") or min(2 * (os.cpu_count() or 1) + 1, 8))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "sync")
threads = int(os.environ.get("GUNICORN_THREADS", "1"))

# Every view answers in milliseconds (an enqueue is one Redis push and one
# row); a request still running after 30 s is stuck and its worker replaced.
timeout = 30
# Matches TimeoutStopSec=45 in the unit: in-flight requests get 30 s to finish
# on stop or reload before systemd's SIGKILL.
graceful_timeout = 30
# Recycling: each restart is a Django start-up (3.5-5.6 s on the 2-vCPU
# development VM under load, measured by importing mqsite.wsgi and serving
# one request) taken out of that worker's capacity, with requests queued
# behind it. At the 1,000 req/s over 4 workers, max_requests = 1000
# restarted every worker every ~4 s (1,100 vs 830 req/s and a 2x p99 with it
# off, issue 14). 50,000 bounds a slow leak just as well (one restart per
# worker every few minutes at full load, hours at ordinary load) and costs
# under 1%. The jitter (10%) keeps the workers from restarting together.
# GUNICORN_MAX_REQUESTS overrides it; 0 turns recycling off.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS") or 50_000)
max_requests_jitter = max_requests // 10

# The worker heartbeat file is fchmod()ed constantly; on a disk-backed /tmp
# that can block a worker (gunicorn's FAQ), /dev/shm is memory.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

# Only the local proxy may set X-Forwarded-Proto and friends.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# Both logs go to the journal through the unit's stdout/stderr. "-" means
# stdout for the access log: opening /dev/stderr fails when stderr is the
# journal's socket. One key=value line per request, like mqsite's own logs;
# the path without its query string, which may carry data nobody should log.
accesslog = "-"
errorlog = "-"
access_log_format = (
    "event=http_request peer=%(h)s forwarded_for=%({x-forwarded-for}i)s "
    'method=%(m)s path="%(U)s" status=%(s)s bytes=%(B)s ms=%(M)s agent="%(a)s"'
)

# gunicorn 25+ opens a control socket under $HOME by default; the service is
# controlled with systemctl, and its home is read-only in the sandbox anyway.
control_socket_disable = True
