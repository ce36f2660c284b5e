"""Settings for the demo project.

Two shapes, chosen by the environment:

* no ``DATABASE_URL`` / ``REDIS_URL``: SQLite and an in-process transport, with one
  hub node embedded in the web server process (the "embedded default");
* ``DATABASE_URL`` (PostgreSQL) and ``REDIS_URL``: any number of ``runhub`` nodes.
  Then the defaults are production ones: ``DEBUG`` off, HTTPS only (redirect,
  secure cookies, HSTS), so that ``manage.py check --deploy`` passes once
  ``DJANGO_SECRET_KEY`` and ``DJANGO_ALLOWED_HOSTS`` are set.

``DEBUG`` is on only in the embedded shape, or when ``DJANGO_DEBUG=1`` asks
for it (``DJANGO_DEBUG=0`` turns it off in the embedded shape too).

Every ``PROCESSHUB`` key can also be set from the environment as
``PROCESSHUB_<KEY>`` (numbers are parsed), which is how the test-suite and the
chaos runner configure the nodes they spawn.
"""
import json
import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    return default if not value else value in ("1", "true", "yes", "on")


DATABASE_URL = os.environ.get("DATABASE_URL", "")
REDIS_URL = os.environ.get("REDIS_URL", "")
EMBEDDED_DEMO = not DATABASE_URL and not REDIS_URL

# With REDIS_URL set, processhub.E004 refuses this fallback: every node and web server needs the real key.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-demo-key-change-me")
DEBUG = _env_flag("DJANGO_DEBUG", EMBEDDED_DEMO)
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver").split(",")

# HTTPS only, unless this is the embedded demo or a debugging session (DJANGO_HTTPS=0/1 decides otherwise).
HTTPS = _env_flag("DJANGO_HTTPS", not EMBEDDED_DEMO and not DEBUG)
SECURE_SSL_REDIRECT = HTTPS
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", 31_536_000 if HTTPS else 0))
# includeSubDomains and preload, as the deploy checks ask; DJANGO_HSTS_PRELOAD=0 when a subdomain serves plain HTTP.
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_PRELOAD = _env_flag("DJANGO_HSTS_PRELOAD", True)
if _env_flag("DJANGO_BEHIND_PROXY", False):
    # TLS ends at a proxy that sets X-Forwarded-Proto (and strips it from clients' requests).
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o]
# The live page's "kill this node" button (staff only, SIGKILL to a runhub of this host): `scripts/demo cluster`
# turns it on for its own nodes; off everywhere else.
DEMO_KILL_NODES = _env_flag("DEMO_KILL_NODES", False)
# Error pages and e-mails without the passwords of DATABASE_URL / REDIS_URL / CELERY_BROKER_URL.
DEFAULT_EXCEPTION_REPORTER = "processhub.reporting.MaskingExceptionReporter"
DEFAULT_EXCEPTION_REPORTER_FILTER = "processhub.reporting.MaskingExceptionReporterFilter"

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
    # Passwords of REDIS_URL/DATABASE_URL never reach the log, whoever logs the URL or the exception.
    "filters": {"mask_secrets": {"()": "processhub.masking.MaskSecretsFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["mask_secrets"]}},
    "loggers": {
        # propagate=False: Celery workers also attach a root handler; one line per event is enough.
        "processhub": {
            "handlers": ["console"],
            "level": os.environ.get("PROCESSHUB_LOG_LEVEL", "INFO"),
            "propagate": False,
        },
    },
}
