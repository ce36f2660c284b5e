"""Settings for the demo project.

Two shapes, chosen by the environment:

* no ``DATABASE_URL`` / ``REDIS_URL``: SQLite and an in-process transport, with one
  hub node embedded in the web server process (the "embedded default");
* ``DATABASE_URL`` (PostgreSQL) and ``REDIS_URL``: any number of ``runhub`` nodes.

Every ``PROCESSHUB`` key can also be set from the environment as
``PROCESSHUB_<KEY>`` (numbers are parsed), which is how the test-suite and the
chaos runner configure the nodes they spawn.
"""
import json
import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-demo-key-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver").split(",")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "processhub",
    "hubproject.demo",
]
INSTALLED_APPS += [a for a in os.environ.get("PROCESSHUB_EXTRA_APPS", "").split(",") if a]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "hubproject.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = "hubproject.wsgi.application"
ASGI_APPLICATION = "hubproject.asgi.application"

DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=None, conn_health_checks=True)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # Fail fast on a dead or blackholed database link, so a node notices
        # within its lease instead of hanging in the kernel for minutes.
        DATABASES["default"].setdefault("OPTIONS", {}).update(
            {
                "connect_timeout": 3,
                "keepalives": 1,
                "keepalives_idle": 2,
                "keepalives_interval": 1,
                "keepalives_count": 2,
                "tcp_user_timeout": 4000,
                # A paused node inside a fenced() transaction holds a row lock: bound what
                # others wait for it, and end its session (and so its lock) when it idles.
                "options": "-c lock_timeout=3000 -c idle_in_transaction_session_timeout=10000",
            }
        )
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("SQLITE_PATH", str(BASE_DIR / "db.sqlite3")),
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }

REDIS_URL = os.environ.get("REDIS_URL", "")

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


def _env_value(raw: str):
    try:
        return json.loads(raw)
    except ValueError:
        return raw


# Environment variables that configure the project or the tests, not the hub.
_NOT_HUB_SETTINGS = {"PROCESSHUB_EXTRA_APPS", "PROCESSHUB_TEST", "PROCESSHUB_LOG_LEVEL", "PROCESSHUB_TEST_DB"}
PROCESSHUB = {
    key[len("PROCESSHUB_"):]: _env_value(value)
    for key, value in os.environ.items()
    if key.startswith("PROCESSHUB_") and key not in _NOT_HUB_SETTINGS
}
PROCESSHUB.setdefault("REDIS_URL", REDIS_URL or None)

# Celery: the same Redis as the hub (see hubproject/celery.py).
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL or "memory://")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", REDIS_URL or "cache+memory://")
CELERY_TASK_ALWAYS_EAGER = not REDIS_URL and "CELERY_BROKER_URL" not in os.environ

AUTH_PASSWORD_VALIDATORS = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        # propagate=False: Celery workers also attach a root handler; one line per event is enough.
        "processhub": {
            "handlers": ["console"],
            "level": os.environ.get("PROCESSHUB_LOG_LEVEL", "INFO"),
            "propagate": False,
        },
    },
}
