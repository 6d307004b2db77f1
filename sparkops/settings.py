"""Spark-Ops settings.

Every value comes from the environment (django-environ); the defaults start the embedded
mode: SQLite and kombu's filesystem broker, no external service. A `.env` file next to
`manage.py` is read when present (`make run` writes one with a generated SECRET_KEY).
Malformed values fail at start-up, not at first use.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import shutil
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import environ
from csp.constants import NONCE, NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from sparkops.pools import pool_for

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# pytest (or `manage.py test`) is running: only used to allow a throw-away SECRET_KEY.
TESTING = "pytest" in sys.modules or sys.argv[1:2] == ["test"]

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if DEBUG or TESTING:
        SECRET_KEY = "insecure-development-key-only-used-when-debug-is-on-0123456789"
    else:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is off (see .env.example; `make run` writes one)."
        )

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=["http://localhost:8080"])
CORS_URLS_REGEX = r"^/(api|health|ready)/?.*$"

VAR_DIR = Path(env.str("SPARKOPS_VAR_DIR", default=str(BASE_DIR / ".var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

INSTALLED_APPS = [
    "sparkops.console.apps.SparkOpsAdminConfig",  # django.contrib.admin, login throttled
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "rest_framework_simplejwt.token_blacklist",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc served from here, never a CDN
    "django_celery_beat",
    "accounts",
    "projects",
    "agents",
    "tools",
    "workflows",
    "runs",
    "policies",
]

MIDDLEWARE = [
    "sparkops.logcontext.LogScopeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "sparkops.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "sparkops.middleware.DatabaseUnavailableMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "sparkops.middleware.JSONAPIErrorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "policies.middleware.GovernanceMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "sparkops.urls"
WSGI_APPLICATION = "sparkops.wsgi.application"

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

# --- Database -------------------------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # web, worker and beat share one file: WAL lets readers run beside the writer, the busy
    # timeout makes a writer wait for the lock instead of failing, and IMMEDIATE transactions
    # take the write lock up front so two writers never deadlock upgrading a read lock.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": env.float("DB_SQLITE_TIMEOUT", default=30.0),
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not Django's in-memory default: engine tests run real Celery workers in other
    # threads and processes, which must all see the same test database.
    # One file per test session (pid), so concurrent sessions never share it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-db-{os.getpid()}.sqlite3")}
else:
    # Every process keeps its PostgreSQL connections in a psycopg pool with a hard cap
    # (DB_POOL_MAX_SIZE), shared by its threads: a request or a task takes a connection when it
    # first queries and gives it back when it ends (Django closes it, CONN_MAX_AGE 0), so no
    # number of threads or requests can open more. A thread that finds the pool empty waits up
    # to DB_POOL_TIMEOUT seconds, then gets an OperationalError (503 in the API, a retry in
    # tasks). README, "Database connections", adds the caps up against max_connections.
    # DB_POOL=0: a connection per thread, kept DB_CONN_MAX_AGE seconds (only safe where the
    # server reuses a bounded set of threads).
    if env.bool("DB_POOL", default=True):
        DATABASES["default"]["CONN_MAX_AGE"] = 0  # Django refuses a pool with persistent ones
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": env.int("DB_POOL_MIN_SIZE", default=0),
            "max_size": env.int("DB_POOL_MAX_SIZE", default=10),
            "timeout": env.float("DB_POOL_TIMEOUT", default=10.0),
            # A refused connection is retried in the background with a doubling delay until
            # this many seconds have passed, then anew on the next request: connections that
            # return are found within seconds, not after a delay grown over a long outage.
            "reconnect_timeout": 5.0,
        }
    else:
        # Tests run worker threads whose connections must close after each task.
        DATABASES["default"]["CONN_MAX_AGE"] = (
            0 if TESTING else env.int("DB_CONN_MAX_AGE", default=0)
        )
    # A pool hands out only connections that answer; without one, Django checks before reuse.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

# --- Cache (throttling, stream slots) --------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
# The cache only holds limits and snapshots: with Redis down every cache operation fails open
# (sparkops/cache.py), after at most this socket timeout, and Redis is not tried again for
# SPARKOPS_CACHE_RETRY_SECONDS.
SPARKOPS_CACHE_SOCKET_TIMEOUT = env.float("SPARKOPS_CACHE_SOCKET_TIMEOUT", default=0.5)
SPARKOPS_CACHE_RETRY_SECONDS = env.float("SPARKOPS_CACHE_RETRY_SECONDS", default=5.0)
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "sparkops.cache.ResilientRedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {
                "socket_connect_timeout": SPARKOPS_CACHE_SOCKET_TIMEOUT,
                "socket_timeout": SPARKOPS_CACHE_SOCKET_TIMEOUT,
            },
        }
    }
else:
    # Shared by the web, worker and beat processes of the embedded mode.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

# --- Passwords --------------------------------------------------------------------------------
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# The largest file an upload or a run's step may store, in bytes.
SPARKOPS_FILE_MAX_BYTES = env.int("SPARKOPS_FILE_MAX_BYTES", default=25 * 1024 * 1024)
# Content types an upload may have (as sniffed from its bytes): exact types or `type/*`.
SPARKOPS_FILE_ALLOWED_TYPES = env.list(
    "SPARKOPS_FILE_ALLOWED_TYPES",
    default=[
        "image/*",
        "text/*",
        "application/pdf",
        "application/json",
        "application/xml",
        "application/yaml",
    ],
)
# How long a signed download URL (GET /api/v1/files/{id}/url/) stays valid, in seconds.
SPARKOPS_FILE_URL_SECONDS = env.int("SPARKOPS_FILE_URL_SECONDS", default=300)
# Where files' bytes live: `local` (the filesystem under SPARKOPS_VAR_DIR/files) or `s3` (any
# S3-compatible object store through django-storages; the AWS_* settings below).
SPARKOPS_FILES_BACKEND = env.str("SPARKOPS_FILES_BACKEND", default="local")
if SPARKOPS_FILES_BACKEND not in {"local", "s3"}:
    raise ImproperlyConfigured("SPARKOPS_FILES_BACKEND must be `local` or `s3`.")
# How often the retention job (beat) deletes expired files, and how many rows a batch takes.
SPARKOPS_FILE_RETENTION_SECONDS = env.float("SPARKOPS_FILE_RETENTION_SECONDS", default=3600.0)
SPARKOPS_FILE_RETENTION_BATCH = env.int("SPARKOPS_FILE_RETENTION_BATCH", default=500)
# Files a run's step writes (an HTTP tool's saved response) expire after this many days; 0 keeps
# them until they, their run's project or the file is deleted.
SPARKOPS_RUN_FILE_RETENTION_DAYS = env.int("SPARKOPS_RUN_FILE_RETENTION_DAYS", default=0)
# What an agent step sends a model of each file it reads: text (text files, a PDF's extracted
# text) cut at this many characters, at most this many PDF pages, images up to this size (the
# providers refuse larger ones: Anthropic's limit is 5 MB).
SPARKOPS_AGENT_FILE_MAX_CHARS = env.int("SPARKOPS_AGENT_FILE_MAX_CHARS", default=100_000)
SPARKOPS_AGENT_FILE_MAX_PAGES = env.int("SPARKOPS_AGENT_FILE_MAX_PAGES", default=50)
SPARKOPS_AGENT_IMAGE_MAX_BYTES = env.int("SPARKOPS_AGENT_IMAGE_MAX_BYTES", default=5 * 1024 * 1024)

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# The console's stylesheet and script, and the API docs' start-up scripts: files, because the
# Content-Security-Policy allows no inline script.
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Files projects keep (projects.files): the local filesystem under SPARKOPS_VAR_DIR.
    "files": (
        {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(VAR_DIR / "files")},
        }
        if SPARKOPS_FILES_BACKEND == "local"
        else {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": env.str("AWS_STORAGE_BUCKET_NAME", default="sparkops-files"),
                "endpoint_url": env.str("AWS_S3_ENDPOINT_URL", default="") or None,
                "region_name": env.str("AWS_S3_REGION_NAME", default="") or None,
                "access_key": env.str("AWS_S3_ACCESS_KEY_ID", default="") or None,
                "secret_key": env.str("AWS_S3_SECRET_ACCESS_KEY", default="") or None,
                # Presigned URLs (GET /files/{id}/url/) live as long as local signed ones.
                "querystring_auth": True,
                "querystring_expire": SPARKOPS_FILE_URL_SECONDS,
                # SigV4 (X-Amz-Expires): what AWS and S3-compatible stores expect; boto3 may
                # otherwise presign with the deprecated SigV2.
                "signature_version": "s3v4",
                "default_acl": None,
                # Paths are `files/<project>/<uuid>`: never taken, so no existence check.
                "file_overwrite": True,
            },
        }
    ),
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG or TESTING
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# --- Security (production values unless DEBUG) ---------------------------------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
# Strict-Transport-Security on answers to HTTPS requests (a proxy's X-Forwarded-Proto: https
# counts, see SECURE_PROXY_SSL_HEADER) once SECURE_HSTS_SECONDS is above 0; never on plain HTTP.
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy of every HTML page (sparkops/csp.py gives everything else
# `default-src 'none'`): this origin only, no inline script, `<style>` elements only with the
# response's nonce (ReDoc's), images also as data: URLs (Swagger UI's and the admin's icons).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, NONCE],
        "img-src": [SELF, "data:"],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}
SILENCED_SYSTEM_CHECKS = env.list(
    "SILENCED_SYSTEM_CHECKS",
    # TLS is terminated by the proxy in front of gunicorn: the redirect is its job, and HSTS
    # stays off until SECURE_HSTS_SECONDS is set (README, "Security headers").
    default=["security.W004", "security.W008"],
)

# --- REST framework ---------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.JWTAuthentication",  # simplejwt's + logout denial
        "accounts.authentication.APIKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": [
        "sparkops.parsers.JSONParser",
        "sparkops.parsers.FormParser",
        "sparkops.parsers.MultiPartParser",
    ],
    "DEFAULT_FILTER_BACKENDS": [
        "sparkops.filters.FilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "sparkops.pagination.PageNumberPagination",
    "PAGE_SIZE": 20,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "sparkops.errors.exception_handler",
    "DEFAULT_METADATA_CLASS": "sparkops.metadata.Metadata",
    "DEFAULT_THROTTLE_CLASSES": ["accounts.throttles.UserOrKeyRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "user_or_key": env.str("THROTTLE_RATE_USER", default="1200/min"),
        "anon": env.str("THROTTLE_RATE_ANON", default="120/min"),
        "auth_ip": env.str("THROTTLE_RATE_AUTH_IP", default="30/min"),
        "auth_email": env.str("THROTTLE_RATE_AUTH_EMAIL", default="10/min"),
    },
    "NUM_PROXIES": env.int("NUM_PROXIES", default=0),
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env.int("JWT_ACCESS_MINUTES", default=15)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env.int("JWT_REFRESH_DAYS", default=7)),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "UPDATE_LAST_LOGIN": True,
    "ALGORITHM": "HS256",
    "SIGNING_KEY": env.str("JWT_SIGNING_KEY", default=SECRET_KEY),
    "AUTH_HEADER_TYPES": ("Bearer",),
    "USER_ID_FIELD": "id",
    "USER_ID_CLAIM": "user_id",
    # Tokens carry a hash of the password hash: a password change also ends access tokens.
    "CHECK_REVOKE_TOKEN": True,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Spark-Ops API",
    "DESCRIPTION": (
        "Control plane for agentic-AI orchestration: projects, agents, tools, workflows, runs, "
        "policies and budgets. Authenticate with a JWT (`Authorization: Bearer <access>`) or an "
        "API key (`Authorization: Api-Key <key>` or `X-API-Key: <key>`)."
    ),
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI and ReDoc from drf-spectacular-sidecar's static files: no CDN, and the pages
    # keep a self-only Content-Security-Policy (templates/drf_spectacular/ has no inline code).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    # The framework's errors (400/401/403/404/429) documented on every operation they apply to.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "sparkops.schema.document_errors",
    ],
    "ENUM_NAME_OVERRIDES": {
        "ProjectStatusEnum": "projects.models.Project.Status",
        "RoleEnum": "projects.models.Role",
        "RunStatusEnum": "runs.models.Run.Status",
        "RunStepStatusEnum": "runs.models.RunStep.Status",
        "WorkflowStatusEnum": "workflows.models.Workflow.Status",
        "PolicyKindEnum": "policies.models.Policy.Kind",
        # Agents and tools share this choice set.
        "EnabledStatusEnum": ["active", "disabled"],
        # An invitation's stored status, plus "expired" (computed from expires_at).
        "InvitationStatusEnum": ["pending", "accepted", "declined", "revoked", "expired"],
    },
}

# --- Celery -----------------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "sparkfs://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    # kombu's filesystem transport with atomic writes (see sparkops/broker.py).
    CELERY_BROKER_URL = "sparkfs://" + CELERY_BROKER_URL.removeprefix("filesystem://")
if CELERY_BROKER_URL.startswith("sparkfs://"):
    _broker_dir = VAR_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
        # The filesystem transport polls; the 1 s default makes a 200-task backlog take 20 s.
        "polling_interval": 0.05,
    }
    for _folder in ("out", "processed", "control"):
        (_broker_dir / _folder).mkdir(parents=True, exist_ok=True)
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Redis re-delivers an unacked message after this many seconds. Tasks here are short
        # (a step is bounded by its soft time limit) and retries wait in the database, never
        # in a long ETA, so one hour is far above any task's run time.
        "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600),
        # Fail fast when Redis is down (the run is in the database; the sweeper re-sends).
        "socket_connect_timeout": 2,
        "socket_timeout": 10,
        # Connections per channel; one more waits for a free one (sparkops/broker.py), so a
        # gevent worker acking hundreds of tasks at once queues instead of failing.
        "max_connections": env.int("CELERY_BROKER_MAX_CONNECTIONS", default=20),
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "orchestration"
# `orchestration`: planning, sweeping, schedules (short, CPU); `steps`: model and HTTP calls
# (I/O-bound, for a threads or gevent pool). Routes, not the deprecated `queue` task option.
CELERY_TASK_ROUTES = {
    "runs.enqueue": {"queue": "orchestration"},
    "runs.advance": {"queue": "orchestration"},
    "runs.sweep": {"queue": "orchestration"},
    "runs.step_execute": {"queue": "steps"},
    "projects.webhook_deliver": {"queue": "steps"},
    "projects.webhook_outbox": {"queue": "orchestration"},
    "projects.files_purge_expired": {"queue": "orchestration"},
    "workflows.schedule_fire": {"queue": "orchestration"},
    "bench.noop": {"queue": "steps"},
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"

# --- Logging: one JSON object per line --------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.server": {"level": env.str("LOG_LEVEL_SERVER", default="INFO")},
        "django.db.backends": {"level": "INFO"},
        # HTTP client libraries log full request URLs (query strings included) at INFO and
        # headers/bodies at DEBUG: warnings only, whatever LOG_LEVEL says. The secret filter
        # below strips and redacts their lines anyway.
        **{
            name: {"level": "WARNING"}
            for name in ("httpx", "httpcore", "httpx2", "httpcore2", "openai", "anthropic")
        },
        # The MCP SDK logs each request's session manager start and stop at INFO.
        "mcp": {"level": "WARNING"},
    },
}

SPARKOPS_VERSION = "0.1.0"
# API keys refresh `last_used_at` at most this often (seconds) to keep reads write-free.
API_KEY_LAST_USED_RESOLUTION = 60
MAX_PAGE_SIZE = 100

# --- Outbound HTTP (sparkops.egress, the only egress path) -------------------------------------
# Hosts, IPs or CIDRs that may be reached even though they are private/loopback/link-local:
# an in-house Ollama or vLLM, or 127.0.0.1 in tests. Empty by default: nothing internal.
SPARKOPS_OUTBOUND_ALLOW = env.list("SPARKOPS_OUTBOUND_ALLOW", default=[])
SPARKOPS_OUTBOUND_CONNECT_TIMEOUT = env.float("SPARKOPS_OUTBOUND_CONNECT_TIMEOUT", default=5.0)
SPARKOPS_OUTBOUND_READ_TIMEOUT = env.float("SPARKOPS_OUTBOUND_READ_TIMEOUT", default=30.0)
SPARKOPS_OUTBOUND_MAX_BYTES = env.int("SPARKOPS_OUTBOUND_MAX_BYTES", default=5 * 1024 * 1024)
SPARKOPS_OUTBOUND_MAX_REDIRECTS = env.int("SPARKOPS_OUTBOUND_MAX_REDIRECTS", default=5)

# --- MCP servers as tool sources (tools.mcp_client) ---------------------------------------------
# stdio MCP servers run a command on the workers: off unless this lists the allowed commands
# (exact paths or names as a project's server gives them, e.g. /usr/local/bin/mcp-fetch).
SPARKOPS_MCP_STDIO_COMMANDS = env.list("SPARKOPS_MCP_STDIO_COMMANDS", default=[])

# --- Secrets at rest ----------------------------------------------------------------------------
# Fernet keys, newest first (`python -c "from cryptography.fernet import Fernet;
# print(Fernet.generate_key().decode())"`). Empty: one key derived from SECRET_KEY.
SPARKOPS_SECRET_KEYS = env.list("SPARKOPS_SECRET_KEYS", default=[])

# --- Run engine ---------------------------------------------------------------------------------
# Running steps heartbeat every SPARKOPS_HEARTBEAT_SECONDS; one silent for
# SPARKOPS_HEARTBEAT_TIMEOUT is taken as lost (worker died) and re-queued by the sweeper, which
# runs every SPARKOPS_SWEEP_SECONDS. Runs/steps left `pending`/`queued` longer than
# SPARKOPS_QUEUED_GRACE (message lost, broker down at enqueue) are sent again.
SPARKOPS_HEARTBEAT_SECONDS = env.float("SPARKOPS_HEARTBEAT_SECONDS", default=5.0)
SPARKOPS_HEARTBEAT_TIMEOUT = env.float("SPARKOPS_HEARTBEAT_TIMEOUT", default=30.0)
SPARKOPS_SWEEP_SECONDS = env.float("SPARKOPS_SWEEP_SECONDS", default=30.0)
SPARKOPS_QUEUED_GRACE = env.float("SPARKOPS_QUEUED_GRACE", default=60.0)
# The sweeper (runs/services/recovery.py) runs one at a time under a lease that lapses after
# SPARKOPS_SWEEP_LEASE_SECONDS if its holder died; it sends at most SPARKOPS_SWEEP_MAX_SENDS
# messages a sweep (oldest first, the rest next time). A message is taken for lost once it is
# older than SPARKOPS_QUEUED_GRACE and than SPARKOPS_SWEEP_LATENCY_FACTOR times the latency
# the queue shows now (a backlog is not a loss); a message it re-sent waits a doubling backoff
# (the grace, twice it, ... at most SPARKOPS_SWEEP_BACKOFF_MAX) before it is sent again.
SPARKOPS_SWEEP_LEASE_SECONDS = env.float("SPARKOPS_SWEEP_LEASE_SECONDS", default=120.0)
SPARKOPS_SWEEP_MAX_SENDS = env.int("SPARKOPS_SWEEP_MAX_SENDS", default=200)
SPARKOPS_SWEEP_LATENCY_FACTOR = env.float("SPARKOPS_SWEEP_LATENCY_FACTOR", default=3.0)
SPARKOPS_SWEEP_BACKOFF_MAX = env.float("SPARKOPS_SWEEP_BACKOFF_MAX", default=900.0)
# Retries whose backoff is shorter than this are sent with a countdown; longer ones wait in
# the database for the sweeper (a long ETA would outlive Redis' visibility timeout).
SPARKOPS_RETRY_COUNTDOWN_MAX = env.float("SPARKOPS_RETRY_COUNTDOWN_MAX", default=60.0)
# A provider's rate limit (429) or server error (5xx) is retried on nodes without a `retry`
# block, up to this many attempts in all (backoff honours the provider's Retry-After).
SPARKOPS_PROVIDER_RETRY_ATTEMPTS = env.int("SPARKOPS_PROVIDER_RETRY_ATTEMPTS", default=4)
SPARKOPS_STEP_TIMEOUT = env.int("SPARKOPS_STEP_TIMEOUT", default=600)
# Transforms and builtin-tool steps run inline in the worker that plans them (no broker hop),
# at most this many per planning transaction (0: every step goes through the steps queue).
SPARKOPS_INLINE_STEPS = env.int("SPARKOPS_INLINE_STEPS", default=100)
# Eager dispatch (runs/services/dispatch.py): a steps worker whose step made another ready takes
# it itself, without a broker hop, for at most this many steps or seconds in a row.
SPARKOPS_EAGER_STEPS = env.int("SPARKOPS_EAGER_STEPS", default=100)
SPARKOPS_EAGER_SECONDS = env.float("SPARKOPS_EAGER_SECONDS", default=60.0)
# Queued steps of a fan-out in one `steps` message, at most this many (runs/services/dispatch.py):
# on the gevent steps worker (PostgreSQL + Redis) 10, elsewhere 1 (one message a step).
SPARKOPS_STEPS_PER_MESSAGE = env.int(
    "SPARKOPS_STEPS_PER_MESSAGE", default=10 if pool_for(os.environ) == "gevent" else 1
)
# Items a `map` node may fan out to (a longer list fails the step; a literal one, the save).
SPARKOPS_MAP_MAX_ITEMS = env.int("SPARKOPS_MAP_MAX_ITEMS", default=10_000)
SPARKOPS_MAX_OUTPUT_BYTES = env.int("SPARKOPS_MAX_OUTPUT_BYTES", default=1024 * 1024)
# A project invitation stays open this many days unless accepted, declined or revoked.
SPARKOPS_INVITATION_DAYS = env.int("SPARKOPS_INVITATION_DAYS", default=14)
SPARKOPS_IDEMPOTENCY_TTL_HOURS = env.int("SPARKOPS_IDEMPOTENCY_TTL_HOURS", default=24)
SPARKOPS_MAX_CHAIN_DEPTH = env.int("SPARKOPS_MAX_CHAIN_DEPTH", default=10)
# Event streams (runs/streams.py): each holds a server thread while open. Per user across all
# web processes (cache slots), per process in memory (never more than the gunicorn worker's
# threads minus a quarter of them); a keep-alive comment this often finds gone clients; a
# stream ends after SPARKOPS_STREAM_MAX_SECONDS and the client reconnects with Last-Event-ID.
SPARKOPS_STREAMS_PER_USER = env.int("SPARKOPS_STREAMS_PER_USER", default=4)
# Unset: 16, lowered without a warning to what the threads allow (16 threads: 12).
SPARKOPS_STREAMS_PER_PROCESS = env.int("SPARKOPS_STREAMS_PER_PROCESS", default=None)
# Agent steps stream model output to open event streams (`llm.delta`); an agent's own
# `settings.stream` wins. Off: one unstreamed call, the same recorded answer and usage.
SPARKOPS_STREAM_DELTAS = env.bool("SPARKOPS_STREAM_DELTAS", default=True)
# The embedded default's delta files (VAR_DIR/deltas): a finished run's is deleted by the
# sweeper once untouched this long; any run's after a day.
SPARKOPS_DELTA_FILE_GRACE = env.float("SPARKOPS_DELTA_FILE_GRACE", default=60.0)
SPARKOPS_STREAM_KEEPALIVE_SECONDS = env.float("SPARKOPS_STREAM_KEEPALIVE_SECONDS", default=5.0)
SPARKOPS_STREAM_MAX_SECONDS = env.float("SPARKOPS_STREAM_MAX_SECONDS", default=300.0)
SPARKOPS_STREAM_POLL_SECONDS = env.float("SPARKOPS_STREAM_POLL_SECONDS", default=0.25)

CELERY_BEAT_SCHEDULE = {
    "runs-sweep": {
        "task": "runs.sweep",
        "schedule": SPARKOPS_SWEEP_SECONDS,
        "options": {"queue": "orchestration", "expires": SPARKOPS_SWEEP_SECONDS},
    },
}
# Publishing must not hang a request when the broker is down: the run is already committed
# and the sweeper sends it once the broker is back.
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}

# --- Observability (README, "Observability") ------------------------------------------------------
# Structured logs: engine log lines carry run_id, project_id, step (sparkops.logcontext).
LOGGING["filters"] = {
    "run_context": {"()": "sparkops.logcontext.RunContextFilter"},
    "redact_secrets": {"()": "sparkops.logcontext.SecretRedactFilter"},
}
LOGGING["handlers"]["console"]["filters"] = ["run_context", "redact_secrets"]
# Celery workers keep this LOGGING (JSON, run context) instead of installing their own handlers.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# /metrics: allowed with `Authorization: Bearer <SPARKOPS_METRICS_TOKEN>` or from an address in
# SPARKOPS_METRICS_ALLOW (CIDRs; empty by default, so closed until one is set: a reverse proxy on
# this host makes every client 127.0.0.1). REMOTE_ADDR is what counts, never X-Forwarded-For.
SPARKOPS_METRICS_TOKEN = env.str("SPARKOPS_METRICS_TOKEN", default="")


def _networks(values: list[str]) -> list[str]:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise ImproperlyConfigured(f"SPARKOPS_METRICS_ALLOW: {exc}") from None
    return values


SPARKOPS_METRICS_ALLOW = _networks(env.list("SPARKOPS_METRICS_ALLOW", default=[]))


def _metrics_dir(path: str) -> str:
    """prometheus-client's multiprocess mode: every web and worker process of this host writes
    its counters under `path` and /metrics adds them up (`make run` empties it before starting
    them). It must be in the environment before prometheus_client is first imported (in
    sparkops.metrics, after settings). Empty: per-process metrics (one process only)."""
    if not path:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        return path
    Path(path).mkdir(parents=True, exist_ok=True)
    if TESTING and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # A test session's own directory (child processes inherit it), removed at its end.

        atexit.register(shutil.rmtree, path, True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


PROMETHEUS_MULTIPROC_DIR = _metrics_dir(
    env.str(
        "PROMETHEUS_MULTIPROC_DIR",
        default=str(VAR_DIR / (f"metrics-test-{os.getpid()}" if TESTING else "metrics")),
    )
)

# OpenTelemetry tracing: on when an OTLP endpoint or a LangWatch key is set, off otherwise.
# The exporter also honours the standard OTEL_EXPORTER_OTLP_HEADERS / _TIMEOUT / _COMPRESSION.
OTEL_SDK_DISABLED = env.bool("OTEL_SDK_DISABLED", default=False)
OTEL_SERVICE_NAME = env.str("OTEL_SERVICE_NAME", default="sparkops")
OTEL_EXPORTER_OTLP_ENDPOINT = env.str("OTEL_EXPORTER_OTLP_ENDPOINT", default="")
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = env.str("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", default="")
LANGWATCH_API_KEY = env.str("LANGWATCH_API_KEY", default="")
# LangWatch's base URL (self-hosted LangWatch: your own); traces go to <base>/api/otel/v1/traces.
LANGWATCH_ENDPOINT = env.str("LANGWATCH_ENDPOINT", default="https://app.langwatch.ai")

# --- Triggers and webhooks ----------------------------------------------------------------------
# A schedule fire later than this after its cron time counts as a catch-up (after beat was down):
# with the schedule's catch_up on it starts one run (never one per missed time), off it is
# recorded as missed. SPARKOPS_SCHEDULE_CLOCK_SKEW: seconds a fire may come early (beat's and the
# worker's clocks differ) and still count for the coming cron time.
SPARKOPS_SCHEDULE_MISFIRE_GRACE = env.float("SPARKOPS_SCHEDULE_MISFIRE_GRACE", default=60.0)
SPARKOPS_SCHEDULE_CLOCK_SKEW = env.float("SPARKOPS_SCHEDULE_CLOCK_SKEW", default=2.0)
# POST /schedules/{id}/backfill starts one run per slot: a range holding more is a 400.
SPARKOPS_SCHEDULE_BACKFILL_MAX_SLOTS = env.int("SPARKOPS_SCHEDULE_BACKFILL_MAX_SLOTS", default=100)
# Inbound webhooks (POST /api/v1/hooks/{token}): body limit and a rate per token.
SPARKOPS_WEBHOOK_MAX_BYTES = env.int("SPARKOPS_WEBHOOK_MAX_BYTES", default=1024 * 1024)
SPARKOPS_WEBHOOK_THROTTLE_RATE = env.str("SPARKOPS_WEBHOOK_THROTTLE_RATE", default="120/min")
# `?wait=N` on a hook holds the request (a server thread, no database connection) up to N
# seconds, capped here, polling the run every SPARKOPS_HOOK_WAIT_POLL seconds.
SPARKOPS_HOOK_MAX_WAIT = env.float("SPARKOPS_HOOK_MAX_WAIT", default=30.0)
SPARKOPS_HOOK_WAIT_POLL = env.float("SPARKOPS_HOOK_WAIT_POLL", default=0.25)
# An MCP client's call of a workflow (runs/triggers/mcp.py) answers the run's output if it ends
# within this many seconds, else its id and URLs (`get_run` follows it); polled as `?wait` is.
SPARKOPS_MCP_WAIT = env.float("SPARKOPS_MCP_WAIT", default=30.0)
for _name in (
    "SPARKOPS_SCHEDULE_BACKFILL_MAX_SLOTS",
    "SPARKOPS_HOOK_MAX_WAIT",
    "SPARKOPS_MCP_WAIT",
):
    if globals()[_name] < 0:
        raise ImproperlyConfigured(f"{_name} must not be negative.")
if SPARKOPS_HOOK_WAIT_POLL <= 0:
    raise ImproperlyConfigured("SPARKOPS_HOOK_WAIT_POLL must be positive.")
# Outbound webhooks: request timeout, how much of a response is read, the waits between attempts
# (seconds; Standard Webhooks' schedule), retries stop this many hours after the event, an
# endpoint failing this long is disabled, a rotated secret keeps signing this long.
SPARKOPS_WEBHOOK_TIMEOUT = env.float("SPARKOPS_WEBHOOK_TIMEOUT", default=15.0)
SPARKOPS_WEBHOOK_MAX_RESPONSE_BYTES = env.int(
    "SPARKOPS_WEBHOOK_MAX_RESPONSE_BYTES", default=64 * 1024
)
SPARKOPS_WEBHOOK_RETRY_SCHEDULE = [
    float(s)
    for s in env.list(
        "SPARKOPS_WEBHOOK_RETRY_SCHEDULE", default=["5", "300", "1800", "7200", "18000", "36000"]
    )
]
SPARKOPS_WEBHOOK_RETRY_HOURS = env.float("SPARKOPS_WEBHOOK_RETRY_HOURS", default=24.0)
SPARKOPS_WEBHOOK_DISABLE_AFTER_HOURS = env.float(
    "SPARKOPS_WEBHOOK_DISABLE_AFTER_HOURS", default=24.0
)
SPARKOPS_WEBHOOK_SECRET_ROTATION_HOURS = env.float(
    "SPARKOPS_WEBHOOK_SECRET_ROTATION_HOURS", default=24.0
)
# The outbox sweep (beat) re-sends due retries, and deliveries unsent this many seconds after
# they were written (their task was lost).
SPARKOPS_WEBHOOK_OUTBOX_SECONDS = env.float("SPARKOPS_WEBHOOK_OUTBOX_SECONDS", default=15.0)
SPARKOPS_WEBHOOK_OUTBOX_GRACE = env.float("SPARKOPS_WEBHOOK_OUTBOX_GRACE", default=30.0)
CELERY_BEAT_SCHEDULE["files-retention"] = {
    "task": "projects.files_purge_expired",
    "schedule": SPARKOPS_FILE_RETENTION_SECONDS,
    "options": {"queue": "orchestration", "expires": SPARKOPS_FILE_RETENTION_SECONDS},
}
CELERY_BEAT_SCHEDULE["webhooks-outbox"] = {
    "task": "projects.webhook_outbox",
    "schedule": SPARKOPS_WEBHOOK_OUTBOX_SECONDS,
    "options": {"queue": "orchestration", "expires": SPARKOPS_WEBHOOK_OUTBOX_SECONDS},
}
