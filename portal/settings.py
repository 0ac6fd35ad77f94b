"""Eventgate settings, driven by environment variables (django-environ).

Every variable is listed in README.md with its default. Defaults work on a developer's machine
with no configuration: SQLite, the in-memory channel layer, and RabbitMQ on localhost.
"""

from __future__ import annotations

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

# Core
SECRET_KEY = env("SECRET_KEY", default="dev-only-insecure-secret-key-change-me")
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list(
    "CSRF_TRUSTED_ORIGINS", default=["http://127.0.0.1:8000", "http://localhost:8000"]
)
# The public base URL of the portal and gateway, used in client snippets shown to consumers.
EVENTGATE_PUBLIC_URL = env("EVENTGATE_PUBLIC_URL", default="http://127.0.0.1:8000")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "allauth",
    "allauth.account",
    "oauth2_provider",
    "portal",
    "gateway",
    "analytics",
    "billing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
]

ROOT_URLCONF = "portal.urls"
ASGI_APPLICATION = "portal.asgi.application"
AUTH_USER_MODEL = "portal.User"

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

# Database: PostgreSQL in tests and production (DATABASE_URL), SQLite file by default.
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'var' / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Several processes (web, worker, beat) share the file under `make run`: wait for locks, take
    # the write lock when a transaction starts (a deferred one that later writes fails at once with
    # "database is locked"), and let readers go on while one process writes (WAL).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        timeout=20, transaction_mode="IMMEDIATE", init_command="PRAGMA journal_mode=WAL;"
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Request bodies Django reads into memory: a 5 MB AsyncAPI document escaped in a JSON body is ~6.7 MB.
DATA_UPLOAD_MAX_MEMORY_SIZE = 8 * 1024 * 1024

# Broker: RabbitMQ carries provider events (topic exchange) and Celery tasks.
AMQP_URL = env("AMQP_URL", default="amqp://guest:guest@127.0.0.1:5672/")
# The topic exchange providers publish events to; routing key "<api>.<version>.<address words>"
# with "%", ".", "*", "#" percent-encoded in each word (docs/gateway.md).
EVENTGATE_EXCHANGE = env("EVENTGATE_EXCHANGE", default="eventgate.events")
# The topic exchange the gateway publishes client→server events to (same routing keys), which
# providers consume; separate so that clients' events never loop back to other clients.
EVENTGATE_INBOUND_EXCHANGE = env("EVENTGATE_INBOUND_EXCHANGE", default="eventgate.inbound")

# Channels and cache: Redis for control messages and the cache; in-memory (one process only)
# without REDIS_URL.
REDIS_URL = env("REDIS_URL", default="")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py's 5 s read timeout equals the layer's 5 s blocking receive: raise it, or
            # every consumer dies with 1011 after about 5 s.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 15}]},
        }
    }
    # Shared by all processes: sign-in rate limits (allauth) must not reset per process or restart.
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Gateway server (``manage.py serve``: uvicorn with the websockets protocol, docs/gateway.md).
# Largest WebSocket message or event body in bytes, the same in both directions: a bigger client
# frame closes with 1009, a bigger broker event is dropped and counted.
GATEWAY_MAX_MESSAGE_BYTES = env.int("GATEWAY_MAX_MESSAGE_BYTES", default=1024 * 1024)
# WebSocket keep-alive: a ping every interval; no pong within the timeout closes the connection.
GATEWAY_PING_INTERVAL = env.float("GATEWAY_PING_INTERVAL", default=20.0)  # seconds
GATEWAY_PING_TIMEOUT = env.float("GATEWAY_PING_TIMEOUT", default=20.0)  # seconds
# Events queued for one slow connection before the slow-consumer policy applies.
GATEWAY_OUTBOX_EVENTS = env.int("GATEWAY_OUTBOX_EVENTS", default=256)
# "drop" (count and skip events while the outbox is full) or "close" (close with 1013).
GATEWAY_SLOW_CONSUMER_POLICY = env("GATEWAY_SLOW_CONSUMER_POLICY", default="drop")
# Server-Sent Events: seconds between keep-alive comments.
GATEWAY_SSE_KEEPALIVE = env.float("GATEWAY_SSE_KEEPALIVE", default=15.0)
# Server-Sent Events resume with Last-Event-ID (docs/sse.md), per channel and process: events,
# bytes of SSE text and age (seconds) held for clients that reconnect, and how long (seconds) a
# channel stays bound after its last SSE client left.
GATEWAY_SSE_REPLAY_EVENTS = env.int("GATEWAY_SSE_REPLAY_EVENTS", default=1000)
GATEWAY_SSE_REPLAY_BYTES = env.int("GATEWAY_SSE_REPLAY_BYTES", default=1024 * 1024)
GATEWAY_SSE_REPLAY_SECONDS = env.float("GATEWAY_SSE_REPLAY_SECONDS", default=120.0)
GATEWAY_SSE_LINGER_SECONDS = env.float("GATEWAY_SSE_LINGER_SECONDS", default=60.0)
# Webhooks: callback URLs on private, loopback or link-local addresses are refused unless allowed
# (tests serve callbacks on 127.0.0.1).
WEBHOOK_ALLOW_PRIVATE_ADDRESSES = env.bool("WEBHOOK_ALLOW_PRIVATE_ADDRESSES", default=False)
# Attempts per delivery (the first one included) before it becomes a dead letter.
WEBHOOK_MAX_ATTEMPTS = env.int("WEBHOOK_MAX_ATTEMPTS", default=6)
# Seconds before the first retry; each later retry waits twice as long as the one before.
WEBHOOK_RETRY_BASE_DELAY = env.float("WEBHOOK_RETRY_BASE_DELAY", default=30.0)
# Seconds a callback has to answer (verification and deliveries).
WEBHOOK_TIMEOUT = env.float("WEBHOOK_TIMEOUT", default=10.0)
# hub.lease_seconds (W3C WebSub §5.1): an active callback is verified again when its lease ends.
WEBHOOK_LEASE_SECONDS = env.int("WEBHOOK_LEASE_SECONDS", default=10 * 24 * 3600)
# The webhook dispatcher's durable RabbitMQ queue (shared by all dispatcher processes).
WEBHOOK_DISPATCH_QUEUE = env("WEBHOOK_DISPATCH_QUEUE", default="eventgate.webhooks")
# Seconds between the dispatcher's looks at the database (bindings, renewals, metering).
WEBHOOK_DISPATCH_POLL_INTERVAL = env.float("WEBHOOK_DISPATCH_POLL_INTERVAL", default=2.0)
# Days a webhook delivery log entry is kept.
WEBHOOK_DELIVERY_RETENTION_DAYS = env.int("WEBHOOK_DELIVERY_RETENTION_DAYS", default=30)
# Gateway: seconds a resolved credential stays in the shared cache at most (never past its expiry;
# revocation and rotation invalidate it at once).
GATEWAY_CREDENTIAL_CACHE_SECONDS = env.int("GATEWAY_CREDENTIAL_CACHE_SECONDS", default=300)
# Gateway: how often (seconds) in-memory usage counters are flushed to analytics.
GATEWAY_FLUSH_INTERVAL = env.float("GATEWAY_FLUSH_INTERVAL", default=5.0)
# Gateway: how often (seconds) each process publishes its live connections (analytics.live) for the
# dashboards' "active connections now"; a process silent for 3 intervals counts as gone.
GATEWAY_LIVE_INTERVAL = env.float("GATEWAY_LIVE_INTERVAL", default=5.0)
# Gateway: how often (seconds) each process re-checks its live connections' keys and subscriptions.
GATEWAY_AUDIT_INTERVAL = env.float("GATEWAY_AUDIT_INTERVAL", default=30.0)
# Gateway: seconds a process reuses a handshake's checked grant for the same credential, API and
# version while no control message touched it (quota and raw database changes reach handshakes
# within this time); also how long it keeps a control group joined after its last connection left.
GATEWAY_GRANT_CACHE_SECONDS = env.float("GATEWAY_GRANT_CACHE_SECONDS", default=10.0)
# Gateway: worker threads for handshake and audit queries; each keeps one database connection.
GATEWAY_DB_THREADS = env.int("GATEWAY_DB_THREADS", default=4)
# Throttling (gateway.throttling, docs/throttling.md): events and bytes a process takes from
# Redis per lease, and what to do while Redis is unreachable ("open": keep delivering, counted
# locally and added when Redis is back; "closed": stop every counted event).
GATEWAY_THROTTLE_LEASE_EVENTS = env.int("GATEWAY_THROTTLE_LEASE_EVENTS", default=100_000)
GATEWAY_THROTTLE_LEASE_BYTES = env.int("GATEWAY_THROTTLE_LEASE_BYTES", default=64 * 1024 * 1024)
GATEWAY_THROTTLE_REDIS_DOWN = env("GATEWAY_THROTTLE_REDIS_DOWN", default="open")
if GATEWAY_THROTTLE_REDIS_DOWN not in ("open", "closed"):
    raise ImproperlyConfigured(
        f"GATEWAY_THROTTLE_REDIS_DOWN must be 'open' or 'closed', not {GATEWAY_THROTTLE_REDIS_DOWN!r}"
    )
# Metrics: who may read each gateway process's Prometheus /metrics (docs/metrics.md): clients at
# these addresses or networks that come without a proxy, or any request bearing METRICS_TOKEN.
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", default=["127.0.0.1", "::1"])
METRICS_TOKEN = env("METRICS_TOKEN", default="")

# Analytics (analytics.rollup, docs in its module docstring): per-minute usage and latency rows are
# rolled up into hours and days by Celery beat every ANALYTICS_ROLLUP_SCHEDULE_SECONDS; an hour is
# rolled ANALYTICS_ROLLUP_GRACE_SECONDS after it ends, and each run rolls the last
# ANALYTICS_REROLL_HOURS hours again so that late gateway flushes still reach hours and days.
ANALYTICS_ROLLUP_SCHEDULE_SECONDS = env.float("ANALYTICS_ROLLUP_SCHEDULE_SECONDS", default=300.0)
ANALYTICS_ROLLUP_GRACE_SECONDS = env.int("ANALYTICS_ROLLUP_GRACE_SECONDS", default=300)
ANALYTICS_REROLL_HOURS = env.int("ANALYTICS_REROLL_HOURS", default=6)
# Analytics retention in days (0 keeps for ever): minute, hour and day usage and latency rows, and
# the connection and handshake logs. Rows are deleted only once a coarser row holds their sums.
ANALYTICS_RETENTION_MINUTE_DAYS = env.int("ANALYTICS_RETENTION_MINUTE_DAYS", default=40)
ANALYTICS_RETENTION_HOUR_DAYS = env.int("ANALYTICS_RETENTION_HOUR_DAYS", default=400)
ANALYTICS_RETENTION_DAY_DAYS = env.int("ANALYTICS_RETENTION_DAY_DAYS", default=0)
ANALYTICS_RETENTION_LOG_DAYS = env.int("ANALYTICS_RETENTION_LOG_DAYS", default=90)

# Celery: tasks travel over RabbitMQ; results are not stored.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=AMQP_URL)
CELERY_TASK_IGNORE_RESULT = True
# The queue workers consume; tests use their own so a running `make run` worker can't steal tasks.
CELERY_TASK_DEFAULT_QUEUE = env("CELERY_TASK_DEFAULT_QUEUE", default="celery")
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_BEAT_SCHEDULE = {
    "ledger-close": {
        "task": "billing.tasks.ledger_close_task",
        "schedule": env.float("BILLING_LEDGER_SECONDS", default=300.0),
    },
    "billing-dunning": {
        "task": "billing.tasks.dunning_advance_task",
        "schedule": env.float("BILLING_DUNNING_SCHEDULE_SECONDS", default=300.0),
    },
    "stripe-events-pending": {
        "task": "billing.tasks.stripe_events_process_pending_task",
        "schedule": env.float("STRIPE_EVENTS_SWEEP_SECONDS", default=300.0),
    },
    "invoice-closed-periods": {
        "task": "billing.tasks.invoice_closed_periods_task",
        "schedule": env.float("BILLING_SCHEDULE_SECONDS", default=3600.0),
    },
    "analytics-rollup": {
        "task": "analytics.tasks.analytics_rollup_task",
        "schedule": ANALYTICS_ROLLUP_SCHEDULE_SECONDS,
        # A run queued behind a stopped worker is dropped once the next one is due: it would only
        # repeat the next run's work.
        "options": {"expires": ANALYTICS_ROLLUP_SCHEDULE_SECONDS},
    },
}

# Demo: where `manage.py load_demo` writes the demo consumer's fresh API key (read by demo_banner).
DEMO_CREDENTIALS_PATH = env.path("DEMO_CREDENTIALS_PATH", default=BASE_DIR / "var" / "demo-credentials.json")

# Billing: how long after a period ends (seconds) before it is closed, for late gateway flushes.
BILLING_GRACE_SECONDS = env.int("BILLING_GRACE_SECONDS", default=3600)
# Late usage is looked for in the closed usage windows of the last N days (billing.ledger).
BILLING_RECONCILE_DAYS = env.int("BILLING_RECONCILE_DAYS", default=35)

# Stripe: off unless STRIPE_API_KEY is set; STRIPE_API_BASE points at a fake server (localstripe).
STRIPE_API_KEY = env("STRIPE_API_KEY", default="")
STRIPE_API_BASE = env("STRIPE_API_BASE", default="")
# localstripe needs a zero-amount Stripe subscription per customer before it creates invoices;
# real Stripe would send a $0 invoice for it every month (billing.stripe_sync).
# (Unset: exactly when STRIPE_API_BASE is set, read when used.)
STRIPE_ZERO_AMOUNT_SUBSCRIPTION = env.bool("STRIPE_ZERO_AMOUNT_SUBSCRIPTION", default=None)
# The browser side (Stripe.js collects cards; they never reach Eventgate): the publishable key and
# where Stripe.js loads from (localstripe serves a stand-in at <STRIPE_API_BASE>/js.stripe.com/v3/).
STRIPE_PUBLISHABLE_KEY = env("STRIPE_PUBLISHABLE_KEY", default="pk_test_eventgate")
STRIPE_JS_URL = env("STRIPE_JS_URL", default="https://js.stripe.com/v3/")
# Webhooks (docs/billing.md › Stripe webhooks): the endpoint's signing secret, and how old a
# signed timestamp may be (seconds) before the event is refused as a replay.
STRIPE_WEBHOOK_SECRET = env("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_WEBHOOK_TOLERANCE_SECONDS = env.int("STRIPE_WEBHOOK_TOLERANCE_SECONDS", default=300)
# Paid plans need a payment method on file or admin-approved invoicing (billing.payments).
BILLING_REQUIRE_PAYMENT_METHOD = env.bool("BILLING_REQUIRE_PAYMENT_METHOD", default=True)
# Dunning after a failed payment: a reminder every N seconds, suspension after the grace period.
BILLING_DUNNING_REMINDER_SECONDS = env.int("BILLING_DUNNING_REMINDER_SECONDS", default=3 * 86400)
BILLING_DUNNING_GRACE_SECONDS = env.int("BILLING_DUNNING_GRACE_SECONDS", default=14 * 86400)
# Days after an invoice is issued before an unpaid one starts dunning without a failed payment
# (paid by invoice, or no card): billing.dunning.
BILLING_INVOICE_DUE_DAYS = env.int("BILLING_INVOICE_DUE_DAYS", default=30)

# Auth: django-allauth with email + password; verification optional in demo mode.
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_EMAIL_VERIFICATION = env("ACCOUNT_EMAIL_VERIFICATION", default="optional")
LOGIN_REDIRECT_URL = "/apps/"
# Sends providers to their APIs and admins to approvals after sign-in.
ACCOUNT_ADAPTER = "portal.adapters.AccountAdapter"
LOGOUT_REDIRECT_URL = "/"
LOGIN_URL = "/accounts/login/"
EMAIL_BACKEND = env("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="Eventgate <noreply@eventgate.local>")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

# OAuth2 (django-oauth-toolkit): the client credentials grant only, at /o/token/ (RFC 6749 §4.4).
# Scopes name an API, a direction and optionally a channel (docs/credentials.md); which an
# application may ask for comes from its subscriptions (portal.oauth.SubscriptionScopes).
OAUTH2_PROVIDER_APPLICATION_MODEL = "oauth2_provider.Application"
OAUTH2_PROVIDER = {
    "ACCESS_TOKEN_EXPIRE_SECONDS": env.int("OAUTH2_ACCESS_TOKEN_SECONDS", default=3600),
    "SCOPES_BACKEND_CLASS": "portal.oauth.SubscriptionScopes",
    "ALLOWED_GRANT_TYPES": ["client_credentials"],
}

# REST API: HTTP Basic (email + password) for scripts, session auth for the browser;
# OpenAPI schema by drf-spectacular.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "portal.authentication.RateLimitedBasicAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticatedOrReadOnly"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Eventgate API",
    "DESCRIPTION": (
        "API management for event-driven APIs: the catalog, AsyncAPI import and publishing, "
        "applications, subscriptions and API keys."
    ),
    "VERSION": "1.0.0",
    # Swagger UI and Redoc from the pinned sidecar package, not a CDN (no internet in many sites).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Several models have a "status" field; name each enum after its model in the schema.
    "ENUM_NAME_OVERRIDES": {
        "APIStatusEnum": "portal.models.API.Status",
        "APIVersionStatusEnum": "portal.models.APIVersion.Status",
        "SubscriptionStatusEnum": "portal.models.Subscription.Status",
        "WebhookStatusEnum": "gateway.models.WebhookSubscription.Status",
        "WebhookDeliveryStatusEnum": "gateway.models.WebhookDelivery.Status",
    },
}

# Static files: served by WhiteNoise from daphne.
STATIC_URL = "/static/"
# Where `npm ci` puts browser bundles and the AsyncAPI JSON Schemas (@asyncapi/specs).
NODE_MODULES_DIR = Path(env("NODE_MODULES_DIR", default=str(BASE_DIR / "node_modules")))
# Third-party bundles are served straight from node_modules (versions pinned in package.json).
STATICFILES_DIRS = [
    BASE_DIR / "static",
    ("vendor/bootstrap", NODE_MODULES_DIR / "bootstrap" / "dist"),
    ("vendor/chart.js", NODE_MODULES_DIR / "chart.js" / "dist"),
    # The official AsyncAPI web component's standalone browser bundle and its stylesheet.
    (
        "vendor/asyncapi-react/standalone",
        NODE_MODULES_DIR / "@asyncapi" / "react-component" / "browser" / "standalone",
    ),
    ("vendor/asyncapi-react/styles", NODE_MODULES_DIR / "@asyncapi" / "react-component" / "styles"),
]
STATIC_ROOT = BASE_DIR / "var" / "staticfiles"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # Credentials never reach a log, whatever the level (uvicorn logs request headers at DEBUG).
    "filters": {"credentials": {"()": "gateway.credentials.CredentialRedactor"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["credentials"]}
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    # daphne's access log prints request paths, which may carry an access_token query parameter.
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        # stripe-python logs every request at INFO.
        "stripe": {"level": "WARNING"},
        # With DEBUG=True Django logs every SQL statement with its parameters at DEBUG, including
        # the OAuth access token django-oauth-toolkit inserts: never below INFO.
        "django.db.backends": {"level": "INFO"},
    },
}

# AsyncAPI import: remote (http/https) $refs in uploaded documents, off by default; when enabled,
# fetched only from these hosts, never from private addresses (docs/asyncapi-import.md).
ASYNCAPI_REMOTE_REFS_ENABLED = env.bool("ASYNCAPI_REMOTE_REFS_ENABLED", default=False)
ASYNCAPI_REMOTE_REF_HOSTS = env.list("ASYNCAPI_REMOTE_REF_HOSTS", default=[])
ASYNCAPI_REMOTE_REF_TIMEOUT = env.float("ASYNCAPI_REMOTE_REF_TIMEOUT", default=5.0)  # seconds
ASYNCAPI_REMOTE_REF_MAX_BYTES = env.int("ASYNCAPI_REMOTE_REF_MAX_BYTES", default=1024 * 1024)
# For tests only (they serve references from 127.0.0.1): lifts the public-address check.
ASYNCAPI_REMOTE_REFS_ALLOW_PRIVATE = env.bool("ASYNCAPI_REMOTE_REFS_ALLOW_PRIVATE", default=False)
