"""Django settings for mqsite, read from the environment.

Every value that differs between a laptop and a server comes from an
environment variable (see README, "Configuration"); the defaults are for
development and are refused by ``check --deploy``.
"""

import fcntl
import os
from pathlib import Path

import dj_database_url
import django
from django.core.exceptions import ImproperlyConfigured
from django.core.management.utils import get_random_secret_key

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("MQ_VAR_DIR", BASE_DIR / "var"))
try:
    # The SQLite database and collected static files live here; a fresh clone
    # has no var/ yet (it is git-ignored). Owner only: the database holds
    # session keys.
    VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    (VAR_DIR / "static").mkdir(exist_ok=True)
except OSError:
    pass  # read-only deployments point MQ_VAR_DIR at a writable state directory


def env_bool(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name, default=""):
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", True)

# Development makes up a key per process when none is given. With DEBUG off
# every process must share one (sessions, CSRF, signed messages): a key made
# up by each gunicorn worker would log users out at random, so none starts.
# check --deploy reports a weak one.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set: with DJANGO_DEBUG=0 every process must share one key. "
            "Make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    SECRET_KEY = get_random_secret_key()

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "tasks",
]
if django.VERSION < (6,):
    # The Tasks API backport is an app (its system checks, its signals);
    # Django 6 has django.tasks built in.
    INSTALLED_APPS.insert(-1, "django_tasks")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # After sessions (the switcher's choice lives in a cookie), before common.
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mqsite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "mqsite.wsgi.application"

# SQLite by default, tuned for several writer processes (web + workers):
# WAL lets readers run beside the writer, IMMEDIATE takes the write lock at
# BEGIN so two writers queue on the busy timeout instead of deadlocking, and
# synchronous=NORMAL is durable across process crashes in WAL mode.
SQLITE_PATH = VAR_DIR / "db.sqlite3"
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{SQLITE_PATH}",
        conn_max_age=int(os.environ.get("DJANGO_CONN_MAX_AGE", "60")),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0 if DATABASES["default"]["NAME"] == ":memory:" else 60
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # Worker processes started by the tests must see the test database, so it
    # lives in a file rather than in memory; one per test run, so that two runs
    # side by side do not share it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-db-{os.getpid()}.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en"
# The pages speak these; the browser's Accept-Language picks one, the
# switcher on every page (a cookie) overrides it. The admin follows Django's own.
LANGUAGES = [("en", "English"), ("ko", "한국어"), ("zh-hans", "简体中文")]
# Compiled .mo files are committed (scripts/compilemessages.py, checked by tests/test_i18n.py).
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"  # created above; filled by collectstatic
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# --- Redis -----------------------------------------------------------------
def embedded_redis_url():
    """The Redis a live `make run` started. scripts/run.py writes its URL and
    holds a lock on make-run.lock for as long as it runs: a URL file nobody
    holds the lock for was left by a run that died, and its port may since
    be another server's."""
    try:
        with open(VAR_DIR / "make-run.lock") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # the lock was free: no make run is live
    except BlockingIOError:
        pass  # held: the run is live, its URL file is current
    except OSError:
        return None
    try:
        return (VAR_DIR / "embedded-redis.url").read_text().strip() or None
    except OSError:
        return None


# No default server: a command that needs Redis when none was named stops
# with a clear error (tasks/connection.py) rather than using whatever answers
# on 127.0.0.1:6379.
REDIS_URL = os.environ.get("REDIS_URL") or embedded_redis_url() or ""

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        # Unused but required: the factory connects through REDIS_URL, any topology.
        "LOCATION": "REDIS_URL",
        "OPTIONS": {
            "CONNECTION_FACTORY": "tasks.queue.cache_connection.MqConnectionFactory",
            "SOCKET_CONNECT_TIMEOUT": 2,
            "SOCKET_TIMEOUT": 2,
            # A cache outage must not take pages down with it.
            "IGNORE_EXCEPTIONS": True,
        },
    }
}
DJANGO_REDIS_IGNORE_EXCEPTIONS = True

# --- Django Tasks API: mqsite is the backend -------------------------------
TASKS = {
    "default": {
        "BACKEND": "tasks.queue.backend.RedisTaskBackend",
        "QUEUES": ["default", "slow"],
    }
}

# --- mqsite (defaults and meaning in tasks/conf.py) --------------------------
MQ_REDIS_URL = REDIS_URL
MQ_API_TOKENS = env_list("MQ_API_TOKENS")
# Tasks one listen_queue runs at once (README, "Workers"). Anything but a
# whole number is kept as written, for `manage.py check` (mqsite.E030) to
# name, rather than a traceback here.
if os.environ.get("MQ_WORKER_CONCURRENCY", "").strip():
    _concurrency = os.environ["MQ_WORKER_CONCURRENCY"].strip()
    MQ_WORKER_CONCURRENCY = int(_concurrency) if _concurrency.isdigit() else _concurrency

# --- Production hardening (active when DEBUG is off) -----------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
USE_X_FORWARDED_HOST = env_bool("DJANGO_USE_X_FORWARDED_HOST", False)
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    # /healthz and /metrics are probed over plain HTTP on the host itself.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # logfmt lines (tasks/logfmt.py): values quoted when they need it, and
    # task_id/task on every line logged while a task runs, whoever logs it.
    "formatters": {
        "logfmt": {"()": "tasks.logfmt.LogfmtFormatter"},
    },
    "filters": {
        "task_context": {"()": "tasks.logfmt.TaskContextFilter"},
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "logfmt", "filters": ["task_context"]},
    },
    "root": {"handlers": ["stderr"], "level": os.environ.get("DJANGO_LOG_LEVEL", "INFO")},
    "loggers": {
        # Django's defaults give the "django" loggers handlers of their own on
        # top of the root one, so a 4xx was printed twice. Now every record
        # goes through the root handler, once, in the same key=value format.
        "django": {"handlers": []},
        # A 4xx already has its line in the access log (runserver's
        # django.server, gunicorn's accesslog); a 5xx keeps its traceback here.
        "django.request": {"level": "ERROR"},
        "django.db.backends": {"level": "WARNING"},
    },
}
