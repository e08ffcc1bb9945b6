"""Settings, read from the environment with safe defaults.

Two modes:
- **embedded default** (no DATABASE_URL): a SQLite file and kombu's filesystem broker under ./var.
  This is the demo mode; an insecure generated SECRET_KEY is allowed.
- **production**: DATABASE_URL=postgres://… and CELERY_BROKER_URL=redis://…; SECRET_KEY is required.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

import dj_database_url
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("CONTROLPLANE_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DATABASE_URL = os.environ.get("DATABASE_URL", "")
# The embedded default (no DATABASE_URL, or a SQLite file) is the demo; PostgreSQL is production-like.
DEMO_MODE = env_bool("CONTROLPLANE_DEMO", default=not DATABASE_URL or DATABASE_URL.startswith("sqlite"))
DEBUG = env_bool("DJANGO_DEBUG", default=False)
TESTING = "pytest" in sys.modules
# A simulated clock (``ramps_tick(now=…)`` in a task message, ``ramps_tick --now``) drives the demo and
# the tests through real workers. In production it is off: anyone who can publish to the broker could
# otherwise push ramps past their minimum durations (issue 17). Test workers get it from the env.
SIMULATED_CLOCK_ALLOWED = env_bool("SIMULATED_CLOCK_ALLOWED", default=DEMO_MODE or DEBUG or TESTING)

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if DEBUG or DEMO_MODE or TESTING:
        # Not a secret: only valid for the embedded demo, debug or tests.
        SECRET_KEY = "insecure-demo-key-" + str(BASE_DIR)
    else:
        raise ImproperlyConfigured(
            "SECRET_KEY is required outside debug/demo mode: export SECRET_KEY=<50+ random characters> "
            "(python -c 'import secrets; print(secrets.token_urlsafe(50))')"
        )

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "http://127.0.0.1:8000,http://localhost:8000")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",  # kept only so its table's migrations stay applied; not an auth class
    "knox",
    "axes",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "controlplane.core",
    "controlplane.serving",
    "controlplane.web",
    "controlplane.demo",
    "rankers",
    "experiments",
    "migrations_runbooks",
    "controlplane.ops",
]

MIDDLEWARE = [
    "controlplane.ops.middleware.RequestContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Before CSRF (which reads form fields) and every view: refuses NUL/surrogates/deep JSON (edge.py).
    "controlplane.edge.EdgeGuardMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes requires: turns a locked-out login into its lockout response.
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    # First: refuses a login for a (username, client address) pair that is locked out.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

# Client address behind proxies: X-Forwarded-For is honoured only when the direct peer is one of
# these (IPs or CIDR networks, comma-separated); the client is the right-most untrusted hop.
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", "")

# Login throttling (django-axes): AXES_FAILURE_LIMIT failed logins for one username from one client
# address lock that pair out for AXES_COOLOFF_TIME (429); a success resets the count. Separately, a
# client address gets LOGIN_ATTEMPTS_PER_MINUTE POSTs a minute (controlplane/views.py), so one
# address cannot spray many usernames. Both key on the proxy-aware client address.
AXES_FAILURE_LIMIT = int(os.environ.get("AXES_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = float(os.environ.get("AXES_COOLOFF_HOURS", "0.25"))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "controlplane.edge.client_ip"
AXES_LOCKOUT_CALLABLE = "controlplane.web.login.login_locked_out"
AXES_VERBOSE = False

ROOT_URLCONF = "controlplane.urls"
WSGI_APPLICATION = "controlplane.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "controlplane" / "templates"],
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

if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(VAR_DIR / "controlplane.sqlite3"),
            # Web, worker and beat share the file: WAL lets readers run beside the writer, and
            # IMMEDIATE transactions take the write lock up front instead of failing mid-transaction.
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
        }
    }
IS_POSTGRES = DATABASES["default"]["ENGINE"].endswith("postgresql")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Serve app static files straight from the packages (no collectstatic needed for the demo).
WHITENOISE_USE_FINDERS = True

# Ingestion: a batch may hold 2,000,000 rows (experiments.ingestion.MAX_ROWS_PER_BATCH); at about
# 120 bytes a row (an event with an ISO timestamp) that is 240 MB, so the ingestion endpoints accept
# bodies up to 256 MiB and answer a larger one with a JSON 413 naming this limit (controlplane/edge.py).
# Every other endpoint keeps Django's 2.5 MiB DATA_UPLOAD_MAX_MEMORY_SIZE.
INGEST_MAX_BODY_BYTES = int(os.environ.get("INGEST_MAX_BODY_BYTES", str(256 * 1024 * 1024)))

# Webhook receivers may only be public addresses (migrations_runbooks/webhook_guard.py); an operator
# who runs an internal receiver names it here: host names, IPs or CIDR networks, comma-separated.
WEBHOOK_ALLOWED_HOSTS = env_list("WEBHOOK_ALLOWED_HOSTS", "")

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# Cookies and transport security: strict by default outside the embedded demo.
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the cookie-less header set in the base template
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if not (DEBUG or DEMO_MODE or TESTING):
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": os.environ["REDIS_URL"]}
        if os.environ.get("REDIS_URL")
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "controlplane"}
    )
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Hashed, expiring, revocable tokens (django-rest-knox); header "Authorization: Token <token>".
        "knox.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["controlplane.core.permissions.IsViewer"],
    "DEFAULT_SCHEMA_CLASS": "controlplane.schema.ControlPlaneAutoSchema",
    "EXCEPTION_HANDLER": "controlplane.core.errors.api_exception_handler",
    # Request bodies are JSON only (the HTML pages post forms to Django views, not to the API),
    # through the edge guard: no NUL, no unpaired surrogate, no nesting beyond 32 (controlplane/edge.py;
    # it does what controlplane.core.parsers.JSONWithoutNulParser does, and more).
    "DEFAULT_PARSER_CLASSES": ["controlplane.edge.GuardedJSONParser"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_THROTTLE_RATES": {"login": "10/min"},
}
REST_KNOX = {
    "TOKEN_TTL": dt.timedelta(days=int(os.environ.get("API_TOKEN_TTL_DAYS", "30"))),
    "AUTH_HEADER_PREFIX": "Token",
    "AUTO_REFRESH": False,
    "TOKEN_LIMIT_PER_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Stack-unification control plane API",
    "DESCRIPTION": (
        "Registry, allocations, serving, experiments and runbooks for moving feed surfaces from the "
        "legacy content-first and interest-first ranking stacks to the unified MTL stack."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Every operation documents the shared error body (400/401/403/404/409/413/429) and has examples.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "controlplane.schema.postprocess_errors_and_examples",
    ],
    "ENUM_NAME_OVERRIDES": {
        "StackStatusEnum": "controlplane.core.models.RankingStack.Status",
        "SurfaceStatusEnum": "controlplane.core.models.Surface.Status",
        "StackKindEnum": "controlplane.core.models.RankingStack.Kind",
        "MetricKindEnum": "experiments.models_evidence.MetricDefinition.Kind",
        "DecisionVerdictEnum": "experiments.models.Decision.Verdict",
    },
}

# --- Celery -------------------------------------------------------------------------------------
BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("in", "processed", "control"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # kombu's filesystem transport: the producer writes to data_folder_out, the consumer reads
        # data_folder_in; pointing both at one folder makes a serverless queue on local disk.
        "data_folder_in": str(BROKER_DIR / "in"),
        "data_folder_out": str(BROKER_DIR / "in"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),  # broadcast/pidbox, else ./control in the CWD
        "store_processed": False,
        "polling_interval": 0.1,
    }
    CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", f"file://{VAR_DIR / 'results'}")
    (VAR_DIR / "results").mkdir(parents=True, exist_ok=True)
else:
    CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", CELERY_BROKER_URL)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = 300
CELERY_TASK_SOFT_TIME_LIMIT = 240
CELERY_TASK_IGNORE_RESULT = False
CELERY_RESULT_EXPIRES = 3600
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A broker outage must not lose work: workers reconnect forever, and a publish (beat's ticks, the
# router's shadow tasks) retries for ~30 s before it gives up. A tick that still cannot be sent is
# harmless: the sweeper is idempotent and the next minute's tick does the due work (tests/faults).
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 12,
    "interval_start": 0.5,
    "interval_step": 0.5,
    "interval_max": 5,
}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "controlplane-heartbeat": {
        "task": "controlplane.core.tasks.heartbeat",
        "schedule": crontab(minute="*"),
        "options": {"expires": 50},
    },
    "ramps-tick": {
        "task": "migrations_runbooks.tasks.ramps_tick",
        "schedule": crontab(minute="*"),
        "options": {"expires": 50},
    },
    "serving-shadow-parity-aggregate": {
        "task": "controlplane.serving.tasks.shadow_parity_aggregate_task",
        "schedule": crontab(minute="*/5"),
        "options": {"expires": 50},
    },
    # Fold yesterday's metric rows into each running experiment's analysis rollup soon after
    # midnight, and again later in case a late batch changed a folded day (experiments/rollups.py).
    "experiments-rollups-refresh": {
        "task": "experiments.tasks.rollups_refresh_running",
        "schedule": crontab(minute="*/15"),
        "options": {"expires": 600},
    },
    "experiments-analyze-running": {
        "task": "experiments.tasks.experiments_analyze_running",
        "schedule": crontab(minute=7),
        "options": {"expires": 3000},
    },
}

# Runbook sweeper: a stored analysis younger than this is reused by a tick; one sweep stops taking
# new ramps after this many seconds (the rest wait for the next tick, oldest first, never skipped).
RUNBOOKS_ANALYSIS_MAX_AGE_S = float(os.environ.get("RUNBOOKS_ANALYSIS_MAX_AGE_S", "300"))
RUNBOOKS_TICK_BUDGET_S = float(os.environ.get("RUNBOOKS_TICK_BUDGET_S", "1.5"))

# --- Operations (controlplane/ops) -------------------------------------------------------------
# LOG_FORMAT=json: one JSON object per line; the default "console" is for people (make run).
LOG_FORMAT = os.environ.get("LOG_FORMAT", "console")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # structlog's formatter (controlplane/ops/logs.py) for every record, from structlog or logging.
    "formatters": {"structured": {"()": "controlplane.ops.logs.formatter", "fmt": LOG_FORMAT}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}

# Content-Security-Policy (django-csp): scripts only from this origin (htmx and plotly.js are served
# from their wheels; charts are drawn by web/app.js from JSON data blocks, no inline script), no
# eval, no plugins, no framing. Styles allow 'unsafe-inline': plotly.js sets inline styles on the SVG
# it draws, and the templates use style attributes for progress bars.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:", "blob:"],
        "font-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    }
}
# /metrics: operators (session or API token), or a scraper sending "Authorization: Bearer <token>".
METRICS_SCRAPE_TOKEN = os.environ.get("METRICS_SCRAPE_TOKEN", "")
