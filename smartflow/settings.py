"""Smartflow settings: everything from the environment, with embedded defaults.

A fresh checkout runs on SQLite (WAL) and the in-process cache; DATABASE_URL
and REDIS_URL switch to PostgreSQL and Redis.
"""
import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("SMARTFLOW_DATA_DIR", BASE_DIR / "data"))


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return default if value in (None, "") else float(value)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def env_list(name: str, default: list[str]) -> list[str]:
    """A comma-separated list; unset or empty (as compose passes an unset variable) gives the default."""
    items = [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]
    return items or list(default)


def env_secret(name: str, filename: str) -> str:
    """A secret from the environment, else from the data folder, else made and stored there."""
    value = os.environ.get(name)
    if value:
        return value
    path = DATA_DIR / filename
    if path.exists():
        return path.read_text().strip()
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    path.write_text(value)
    path.chmod(0o600)
    return value


def read_master_key() -> str:
    value = os.environ.get("SMARTFLOW_MASTER_KEY", "")
    if value:
        return value
    path = DATA_DIR / "master_key"
    return path.read_text().strip() if path.exists() else ""


SECRET_KEY = env_secret("DJANGO_SECRET_KEY", "secret_key")
DEBUG = env_bool("DJANGO_DEBUG", False)
# --- Behind a TLS-terminating proxy: host names, origins, cookies, the forwarded scheme, HSTS ---
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["*"])
if "*" not in ALLOWED_HOSTS:  # the container's healthcheck asks for http://127.0.0.1:7777/health
    ALLOWED_HOSTS += [h for h in ("127.0.0.1", "localhost", "[::1]") if h not in ALLOWED_HOSTS]
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
# Session, CSRF and SSO sign-in cookies only over https.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("SMARTFLOW_SECURE_COOKIES", False)
# Only behind a proxy that sets X-Forwarded-Proto itself: otherwise a client could claim https.
if env_bool("SMARTFLOW_TRUST_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = env_int("SMARTFLOW_HSTS_SECONDS", 0)  # sent on https answers only

# --- Smartflow -------------------------------------------------------------
SMARTFLOW_PROXY_PORT = env_int("SMARTFLOW_PROXY_PORT", 7777)
SMARTFLOW_MANAGEMENT_PORT = env_int("SMARTFLOW_MANAGEMENT_PORT", 7778)
SMARTFLOW_MASTER_KEY = read_master_key()
SMARTFLOW_BASE_URLS = {
    "openai": env_str("SMARTFLOW_OPENAI_BASE_URL", "https://api.openai.com/v1"),
    "anthropic": env_str("SMARTFLOW_ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
    "gemini": env_str("SMARTFLOW_GEMINI_BASE_URL", "https://generativelanguage.googleapis.com"),
    "ollama": env_str("SMARTFLOW_OLLAMA_BASE_URL", "http://localhost:11434"),
}
SMARTFLOW_PROVIDER_KEYS = {
    "openai": env_str("OPENAI_API_KEY"),
    "anthropic": env_str("ANTHROPIC_API_KEY"),
    "gemini": env_str("GEMINI_API_KEY"),
    "ollama": env_str("OLLAMA_API_KEY"),
}
SMARTFLOW_UPSTREAM_TIMEOUT = env_float("SMARTFLOW_UPSTREAM_TIMEOUT", 600.0)
# A routing policy's attempts together (retries, backoff, failovers); each attempt also has the one above.
SMARTFLOW_ROUTING_TIMEOUT = env_float("SMARTFLOW_ROUTING_TIMEOUT", 900.0)
SMARTFLOW_UPSTREAM_CONNECT_TIMEOUT = env_float("SMARTFLOW_UPSTREAM_CONNECT_TIMEOUT", 10.0)
SMARTFLOW_UPSTREAM_MAX_CONNECTIONS = env_int("SMARTFLOW_UPSTREAM_MAX_CONNECTIONS", 1000)
SMARTFLOW_MAX_BODY_BYTES = env_int("SMARTFLOW_MAX_BODY_BYTES", 10 * 1024 * 1024)
# How long keys, teams, provider keys and the tier table are cached in memory.
SMARTFLOW_CONFIG_TTL = env_float("SMARTFLOW_CONFIG_TTL", 5.0)
SMARTFLOW_TRACE_BATCH_SIZE = env_int("SMARTFLOW_TRACE_BATCH_SIZE", 500)
SMARTFLOW_TRACE_FLUSH_SECONDS = env_float("SMARTFLOW_TRACE_FLUSH_SECONDS", 0.2)
SMARTFLOW_TRACE_RETENTION_DAYS = env_int("SMARTFLOW_TRACE_RETENTION_DAYS", 30)
# Traces waiting for the database (it is down or slow): beyond either bound the oldest are dropped.
SMARTFLOW_TRACE_BACKLOG_MAX = env_int("SMARTFLOW_TRACE_BACKLOG_MAX", 200_000)
SMARTFLOW_TRACE_BACKLOG_BYTES = env_int("SMARTFLOW_TRACE_BACKLOG_BYTES", 256 * 1024 * 1024)
# A chat request's body must arrive within this (slow or stalled uploads answer 408).
SMARTFLOW_BODY_TIMEOUT_SECONDS = env_float("SMARTFLOW_BODY_TIMEOUT_SECONDS", 60.0)
# Idle keep-alive connections stay open this long: above a load balancer's usual 60 s idle timeout.
SMARTFLOW_KEEPALIVE_SECONDS = env_int("SMARTFLOW_KEEPALIVE_SECONDS", 75)
# Each /health check (database, cache) gets at most this many seconds.
SMARTFLOW_HEALTH_TIMEOUT = env_float("SMARTFLOW_HEALTH_TIMEOUT", 2.0)
# The benchmark's event-loop lag probe (smartflow/looplag.py): a file to append to; off when empty.
SMARTFLOW_LOOP_LAG_FILE = os.environ.get("SMARTFLOW_LOOP_LAG_FILE", "")
SMARTFLOW_ANTHROPIC_DEFAULT_MAX_TOKENS = env_int("SMARTFLOW_ANTHROPIC_DEFAULT_MAX_TOKENS", 4096)
# Key for encrypting provider keys at rest (Fernet); derived from SECRET_KEY if unset.
SMARTFLOW_ENCRYPTION_KEY = env_str("SMARTFLOW_ENCRYPTION_KEY")
SMARTFLOW_JWT_TTL_SECONDS = env_int("SMARTFLOW_JWT_TTL_SECONDS", 3600)
# SSO: how long a process may keep the shared config in memory, how long a sign-in may take.
SMARTFLOW_SSO_CONFIG_TTL = env_float("SMARTFLOW_SSO_CONFIG_TTL", 1.0)
SMARTFLOW_SSO_STATE_TTL = env_int("SMARTFLOW_SSO_STATE_TTL", 600)
SMARTFLOW_ENTRA_AUTHORITY = env_str("SMARTFLOW_ENTRA_AUTHORITY", "https://login.microsoftonline.com")

REDIS_URL = env_str("REDIS_URL")
# Every Redis key of the Django cache and of MetaCache starts with this.
SMARTFLOW_CACHE_PREFIX = env_str("SMARTFLOW_CACHE_PREFIX", "smartflow")
# MetaCache: cosine similarity a semantic hit needs (SMARTFLOW_CACHE=semantic).
SMARTFLOW_CACHE_SEMANTIC_THRESHOLD = env_float("SMARTFLOW_CACHE_SEMANTIC_THRESHOLD", 0.95)

# --- MetaCache (proxy/policies/cache.py) ---------------------------------------------
SMARTFLOW_CACHE = env_str("SMARTFLOW_CACHE", "exact").lower()
if SMARTFLOW_CACHE not in ("exact", "semantic", "off"):
    raise ImproperlyConfigured("SMARTFLOW_CACHE must be exact, semantic or off.")
SMARTFLOW_CACHE_TTL = env_int("SMARTFLOW_CACHE_TTL", 3600)
SMARTFLOW_CACHE_MAX_BYTES = env_int("SMARTFLOW_CACHE_MAX_BYTES", 64 * 1024 * 1024)
# Budgets and rate limits (proxy/policies/limits.py). Off: nothing enforced, spend not counted.
SMARTFLOW_LIMITS = env_bool("SMARTFLOW_LIMITS", True)
# Redis down: "open" serves and counts in this process, "closed" refuses with 503.
SMARTFLOW_LIMITS_FAIL = env_str("SMARTFLOW_LIMITS_FAIL", "open").lower()
if SMARTFLOW_LIMITS_FAIL not in ("open", "closed"):
    raise ImproperlyConfigured("SMARTFLOW_LIMITS_FAIL must be open or closed.")
# A budget-limited team may use a model the price table lacks (its spend then does not move).
SMARTFLOW_LIMITS_ALLOW_UNPRICED = env_bool("SMARTFLOW_LIMITS_ALLOW_UNPRICED", False)
# Output tokens reserved for a request that sets no max_tokens / max_completion_tokens.
SMARTFLOW_LIMITS_DEFAULT_OUTPUT_TOKENS = env_int("SMARTFLOW_LIMITS_DEFAULT_OUTPUT_TOKENS", 4096)

# --- Django ----------------------------------------------------------------
INSTALLED_APPS = [
    "smartflow.daphne_app.DaphneConfig",  # its runserver; daphne.apps would load Twisted in every process
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_prometheus",
    "mozilla_django_oidc",
    "proxy",
    "traces",
    "sso",
    "metrics",
]

MIDDLEWARE = [
    "smartflow.ports.PortUrlconfMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "sso.sessions.KeySessionMiddleware",  # before auth: a revoked key's session is signed out
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "smartflow.urls_management"
ASGI_APPLICATION = "smartflow.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

if env_str("DATABASE_URL"):
    DATABASES = {"default": dj_database_url.parse(env_str("DATABASE_URL"), conn_max_age=60)}
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "smartflow.sqlite3",
            # WAL lets the dashboard read while the trace writer writes.
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;",
            },
            # A file, not :memory:, so the live gateway's threads share the test database.
            "TEST": {"NAME": DATA_DIR / "test.sqlite3"},
        }
    }

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            # A Redis that stops answering costs a second, not a thread for good (/metrics reads it).
            "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient",
                        "SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1},
            "KEY_PREFIX": env_str("SMARTFLOW_CACHE_PREFIX", "smartflow"),
        }
    }
    # Live trace rows reach browsers connected to any gateway process.
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                    "CONFIG": {"hosts": [REDIS_URL],
                               "prefix": env_str("SMARTFLOW_CHANNELS_PREFIX", "smartflow:channels")}},
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                          "LOCATION": "smartflow"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
# Without a broker every task runs in the calling process.
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_IGNORE_RESULT = True

# --- Observability (traces dashboard, /metrics) -----------------------------------
# Redis hash and cache keys of the metrics live under this prefix.
SMARTFLOW_METRICS_PREFIX = env_str("SMARTFLOW_METRICS_PREFIX",
                                   env_str("SMARTFLOW_CACHE_PREFIX", "smartflow") + ":metrics")
# How often the beat task rolls up the last 1,000 VAS logs; a scrape recomputes a roll-up older than twice this.
SMARTFLOW_METRICS_ROLLUP_SECONDS = env_float("SMARTFLOW_METRICS_ROLLUP_SECONDS", 15.0)
# Old VAS logs are deleted this many rows per statement.
SMARTFLOW_TRACE_RETENTION_BATCH = env_int("SMARTFLOW_TRACE_RETENTION_BATCH", 5000)
CELERY_TASK_DEFAULT_QUEUE = env_str("SMARTFLOW_CELERY_QUEUE", "smartflow")
CELERY_BEAT_SCHEDULE = {
    "metrics-rollup": {"task": "metrics.rollup", "schedule": SMARTFLOW_METRICS_ROLLUP_SECONDS},
    "traces-retention": {"task": "traces.purge_old_logs", "schedule": 3600.0},
}
# django-prometheus: request metrics of the Django views (the proxy's lean chat handler is not one).
MIDDLEWARE = ["django_prometheus.middleware.PrometheusBeforeMiddleware", *MIDDLEWARE,
              "django_prometheus.middleware.PrometheusAfterMiddleware"]

AUTH_PASSWORD_VALIDATORS = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["proxy.auth.ManagementAuthentication",
                                       "sso.tokens.SmartflowJWTAuthentication",
                                       "rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
# The management API's OpenAPI schema (/api/schema/) and Swagger UI (/api/docs/, its files from
# drf-spectacular-sidecar, nothing from a CDN). Not secret, but served like the rest of the
# management API: to the master key, an admin key, a Smartflow JWT or a signed-in session.
SPECTACULAR_SETTINGS = {
    "TITLE": "Smartflow management API",
    "DESCRIPTION": "The management port's API: VAS logs, SSO, teams and metrics. Auth: `Authorization: Bearer` "
                   "with the master key, an admin key or a Smartflow JWT, or the dashboard's session.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SCHEMA_PATH_PREFIX": r"/api/",
    "COMPONENT_SPLIT_REQUEST": True,
    "PARSER_WHITELIST": ["rest_framework.parsers.JSONParser"],  # bodies are JSON
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums",
                             "smartflow.openapi.add_plain_routes"],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Provider keys never reach a log line: every record is scrubbed before it is written.
    "filters": {"scrub_secrets": {"()": "proxy.scrub.ScrubSecrets"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["scrub_secrets"]}},
    "root": {"handlers": ["console"], "level": env_str("SMARTFLOW_LOG_LEVEL", "INFO")},
    # httpx logs every request at INFO: too costly, and noise, on the hot path.
    "loggers": {"httpx": {"level": "WARNING"}, "httpcore": {"level": "WARNING"}},
}
