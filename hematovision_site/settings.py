"""HematoVision settings, read from the environment (django-environ).

Defaults give the embedded lab profile: SQLite and private local media under
``var/`` (readable by this account only), debug on, console e-mail. Production sets ``DJANGO_DEBUG=0``,
``DJANGO_SECRET_KEY``, ``DJANGO_ALLOWED_HOSTS`` and usually ``DATABASE_URL``
and ``CELERY_BROKER_URL``; it then gets HTTPS-only cookies and HSTS.
"""

import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured
from django.core.management.utils import get_random_secret_key

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DJANGO_DEBUG", default=True)
VAR_DIR = Path(env.str("HEMATOVISION_VAR_DIR", default=str(BASE_DIR / "var")))


def _private_dir(path: Path) -> None:
    """Create ``path`` readable by this account only: it holds the SQLite database (API tokens
    included), the development secret key and the patient images."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        if path.stat().st_uid == os.getuid():
            path.chmod(0o700)
    except OSError:  # a mounted volume owned by someone else: its owner decides
        pass


_private_dir(VAR_DIR)


def _secret_key() -> str:
    """Required in production; in debug, a random key kept in var/ so sessions survive restarts."""
    key = env.str("DJANGO_SECRET_KEY", default="")
    if key:
        return key
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off.")
    path = VAR_DIR / "dev-secret-key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(get_random_secret_key())
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "crispy_forms",
    "crispy_bootstrap5",
    "axes",
    "accounts",
    "classifier",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "hematovision_site.middleware.ContentSecurityPolicyMiddleware",
    "hematovision_site.middleware.PrivateResponsesMiddleware",
    # Reads a portal form's body before the CSRF check does, so "too many files" gets a message.
    "classifier.uploads.TooManyFilesMiddleware",
    "axes.middleware.AxesMiddleware",
    "hematovision_site.middleware.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "hematovision_site.urls"
WSGI_APPLICATION = "hematovision_site.wsgi.application"

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
                "accounts.context_processors.roles",
            ],
        },
    },
]

# Database: embedded SQLite (WAL, busy timeout) unless DATABASE_URL is set.
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            # Seconds a write waits for SQLite's lock before the database counts as unavailable.
            "timeout": env.float("HEMATOVISION_SQLITE_TIMEOUT", default=20),
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DJANGO_CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"]["ATOMIC_REQUESTS"] = False
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

# Login throttling (django-axes): lock a username+IP after repeated failures.
AXES_FAILURE_LIMIT = env.int("HEMATOVISION_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("HEMATOVISION_LOGIN_COOLOFF_HOURS", default=0.25)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_CLIENT_IP_CALLABLE = "hematovision_site.middleware.client_ip"  # as the API throttles count
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
AXES_ENABLED = env.bool("HEMATOVISION_AXES_ENABLED", default=True)

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("DJANGO_TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Patient images live in MEDIA_ROOT but are never served from a public URL:
# only permission-checked views stream them (see classifier.views).
MEDIA_ROOT = Path(env.str("HEMATOVISION_MEDIA_ROOT", default=str(VAR_DIR / "media")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
FILE_UPLOAD_PERMISSIONS = 0o600
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700

def email_settings(values, debug: bool) -> dict:
    """Mail for password resets. ``DJANGO_EMAIL_URL`` (e.g. ``smtp+tls://user:pass@host:587``) sets
    them all; else ``DJANGO_EMAIL_BACKEND``; else the console while debugging and nothing at all in
    production: a reset link printed to the console would sit in the server's logs, where anyone
    who reads them could take over the account."""
    if values.get("DJANGO_EMAIL_URL"):
        return environ.Env.email_url_config(values["DJANGO_EMAIL_URL"])
    default = "django.core.mail.backends." + ("console" if debug else "dummy") + ".EmailBackend"
    return {"EMAIL_BACKEND": values.get("DJANGO_EMAIL_BACKEND") or default}


globals().update(email_settings(os.environ, DEBUG))
DEFAULT_FROM_EMAIL = env.str("DJANGO_DEFAULT_FROM_EMAIL", default="hematovision@localhost")

CRISPY_ALLOWED_TEMPLATE_PACKS = "bootstrap5"
CRISPY_TEMPLATE_PACK = "bootstrap5"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.UserRateThrottle",
        "rest_framework.throttling.AnonRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "user": env.str("HEMATOVISION_API_USER_RATE", default="1200/min"),
        "anon": env.str("HEMATOVISION_API_ANON_RATE", default="30/min"),
        "uploads": env.str("HEMATOVISION_API_UPLOAD_RATE", default="120/min"),
        "token": env.str("HEMATOVISION_API_TOKEN_RATE", default="10/min"),
    },
    "EXCEPTION_HANDLER": "classifier.api.exceptions.api_exception_handler",
    # Throttles count per client address: REMOTE_ADDR, or with N trusted reverse proxies in front the
    # address the last of them saw (the Nth from the right of X-Forwarded-For). Never unset: DRF
    # would then trust whatever X-Forwarded-For a client sends, and each forged value escapes the limit.
    "NUM_PROXIES": env.int("HEMATOVISION_NUM_PROXIES", default=0),
}
SPECTACULAR_SETTINGS = {
    "TITLE": "HematoVision LIS API",
    "DESCRIPTION": "White-blood-cell pre-classification results for laboratory information systems.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Name the shared choice sets once, so other models' "status" fields cannot collide with them.
    "ENUM_NAME_OVERRIDES": {
        "CellClassEnum": "classifier.models.CellClass",
        "ClassificationStatusEnum": "classifier.models.Status",
        "ReviewStateEnum": "classifier.models.ReviewState",
        "ReportVersionKindEnum": "classifier.models.ReportVersion.Kind",
        "BatchJobKindEnum": "classifier.models.BatchJob.Kind",
    },
}

# Cache (API throttle counters live here). One process's memory suits the embedded single-process
# server; with several gunicorn workers set HEMATOVISION_CACHE_URL (redis://...) so that every
# worker counts against the same limits (else each worker grants the full rate on its own).
HEMATOVISION_CACHE_URL = env.str("HEMATOVISION_CACHE_URL", default="")
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": HEMATOVISION_CACHE_URL}
        if HEMATOVISION_CACHE_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

# Celery: a real queue only when a broker is configured; otherwise jobs run in-process.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1

# HematoVision's own settings.
# "ml" runs the shipped Keras model; "fake" is a deterministic stand-in for fast tests.
HEMATOVISION_PREDICTOR = env.str("HEMATOVISION_PREDICTOR", default="ml")
HEMATOVISION_MODEL_PATH = env.str("HEMATOVISION_MODEL_PATH", default="") or None
# "auto" (LiteRT/XNNPACK when its export verifies against Keras, else Keras), "keras", "litert",
# or "naive" (model.predict per image, only for comparisons such as the load test).
HEMATOVISION_INFERENCE_BACKEND = env.str("HEMATOVISION_INFERENCE_BACKEND", default="auto")
HEMATOVISION_MAX_UPLOAD_BYTES = env.int("HEMATOVISION_MAX_UPLOAD_MB", default=20) * 1024 * 1024
HEMATOVISION_MAX_PIXELS = env.int("HEMATOVISION_MAX_PIXELS", default=40_000_000)
# Memory, bounded by design (classifier.validation, classifier.limits): an image whose header says it
# would take more than this to decode (width x height x bands x bytes per sample) is refused before
# decoding; at most HEMATOVISION_IMAGE_WORKERS images are decoded and classified at once per process
# (others wait up to HEMATOVISION_IMAGE_WORK_WAIT_SECONDS, then get 503 server_busy).
HEMATOVISION_MAX_DECODED_MB = env.float("HEMATOVISION_MAX_DECODED_MB", default=64)
HEMATOVISION_IMAGE_WORKERS = env.int("HEMATOVISION_IMAGE_WORKERS", default=2)
HEMATOVISION_IMAGE_WORK_WAIT_SECONDS = env.float("HEMATOVISION_IMAGE_WORK_WAIT_SECONDS", default=60)
# Batch jobs: limits per job, and whether the embedded profile runs them in a thread of the web process.
HEMATOVISION_BATCH_MAX_FILES = env.int("HEMATOVISION_BATCH_MAX_FILES", default=1000)
HEMATOVISION_BATCH_MAX_ARCHIVE_MB = env.int("HEMATOVISION_BATCH_MAX_ARCHIVE_MB", default=2048)
HEMATOVISION_JOBS_IN_THREAD = env.bool("HEMATOVISION_JOBS_IN_THREAD", default=True)
# Without a broker, jobs run on a pool of this many threads per process (with Celery: its concurrency).
HEMATOVISION_JOB_WORKERS = env.int("HEMATOVISION_JOB_WORKERS", default=1)
# Unfinished (queued or running) jobs one user may have; another is refused with 429 too_many_jobs.
HEMATOVISION_MAX_QUEUED_JOBS_PER_USER = env.int("HEMATOVISION_MAX_QUEUED_JOBS_PER_USER", default=4)
# Uploads kept while the database was unavailable are retried this often until they are filed.
HEMATOVISION_SPOOL_RETRY_SECONDS = env.float("HEMATOVISION_SPOOL_RETRY_SECONDS", default=5)
# manage.py cleanup_orphans / resume_jobs: a stored file no row refers to is an orphan once this old.
HEMATOVISION_ORPHAN_MIN_AGE_SECONDS = env.int("HEMATOVISION_ORPHAN_MIN_AGE_SECONDS", default=3600)
HEMATOVISION_LAB_NAME = env.str("HEMATOVISION_LAB_NAME", default="Hematology Laboratory")
# The lab's postal address under its name on every report page's header; "|" or a newline starts a line.
HEMATOVISION_LAB_ADDRESS = env.str("HEMATOVISION_LAB_ADDRESS", default="")
# ---- LIS interface (issue 19; docs/api.md "Integrating an LIS") ----
# Fewer white cells counted than this: no H/L flags, and a comment says why (100: a manual differential).
HEMATOVISION_MIN_CELLS_FOR_FLAGS = env.int("HEMATOVISION_MIN_CELLS_FOR_FLAGS", default=100)
# True: images land only on accessions an LIS ordered (POST /api/v1/orders/ or OML^O21/ORM^O01).
HEMATOVISION_REQUIRE_ORDER = env.bool("HEMATOVISION_REQUIRE_ORDER", default=False)
# MSH-4 (HD): namespace id (default: the lab name cut to 20 characters) and ISO OID universal id.
HEMATOVISION_HL7_FACILITY = env.str("HEMATOVISION_HL7_FACILITY", default="")
HEMATOVISION_HL7_FACILITY_OID = env.str("HEMATOVISION_HL7_FACILITY_OID", default="")
# The lab's own codes, sent beside LOINC (HL7 CWE.4-6, a second FHIR coding): a JSON object of
# "PANEL" or a class code -> ["local code", "display"]; their HL7 coding system (99zzz) and FHIR system.
HEMATOVISION_LOCAL_CODES = env.json("HEMATOVISION_LOCAL_CODES", default={})
HEMATOVISION_LOCAL_CODE_SYSTEM = env.str("HEMATOVISION_LOCAL_CODE_SYSTEM", default="99LAB")
HEMATOVISION_LOCAL_CODE_URI = env.str("HEMATOVISION_LOCAL_CODE_URI", default="")
# MSH-5/MSH-6 of the results sent: the LIS application and facility.
HEMATOVISION_LIS_APPLICATION = env.str("HEMATOVISION_LIS_APPLICATION", default="")
HEMATOVISION_LIS_FACILITY = env.str("HEMATOVISION_LIS_FACILITY", default="")
# Where signed and amended results are pushed as ORU^R01 over MLLP (manage.py hl7_sender): host:port,...
HEMATOVISION_LIS_DESTINATIONS = env.list("HEMATOVISION_LIS_DESTINATIONS", default=[])
# manage.py hl7_listener: the MLLP address orders arrive on, and the Interface account they are filed as.
HEMATOVISION_HL7_LISTEN = env.str("HEMATOVISION_HL7_LISTEN", default="127.0.0.1:2575")
HEMATOVISION_HL7_ORDER_USER = env.str("HEMATOVISION_HL7_ORDER_USER", default="")
HEMATOVISION_HL7_ACK_TIMEOUT_SECONDS = env.float("HEMATOVISION_HL7_ACK_TIMEOUT_SECONDS", default=30)
# Delivery retries back off from the first to the longest wait, doubling; a message is never dropped.
HEMATOVISION_HL7_RETRY_SECONDS = env.float("HEMATOVISION_HL7_RETRY_SECONDS", default=15)
HEMATOVISION_HL7_RETRY_MAX_SECONDS = env.float("HEMATOVISION_HL7_RETRY_MAX_SECONDS", default=900)
HEMATOVISION_PASSWORD_RESETS_PER_HOUR = env.int("HEMATOVISION_PASSWORD_RESETS_PER_HOUR", default=5)
# Mails an hour one address gets from all clients together (a mailbox-flood bound); a browser that has
# signed in to the account before always gets its own HEMATOVISION_PASSWORD_RESETS_PER_HOUR on top.
HEMATOVISION_PASSWORD_RESETS_PER_ADDRESS_PER_HOUR = env.int(
    "HEMATOVISION_PASSWORD_RESETS_PER_ADDRESS_PER_HOUR", default=10
)
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
# Files per request: a batch job's images plus its ZIP (Django's default of 100 refused a 101-image batch).
DATA_UPLOAD_MAX_NUMBER_FILES = HEMATOVISION_BATCH_MAX_FILES + 1
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
# A file over its limit (HEMATOVISION_MAX_UPLOAD_BYTES for an image, HEMATOVISION_BATCH_MAX_ARCHIVE_MB
# for a batch ZIP) is counted, not written to memory or disk (classifier.uploads).
FILE_UPLOAD_HANDLERS = [
    "classifier.uploads.UploadLimitHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("DJANGO_LOG_LEVEL", default="INFO")},
    "loggers": {"axes.apps": {"level": "WARNING"}},
}

# Production profile: HTTPS only.
if not DEBUG:
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # probes inside the container speak plain HTTP
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=True)
    if env.bool("DJANGO_BEHIND_TLS_PROXY", default=False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = env.int("HEMATOVISION_SESSION_SECONDS", default=8 * 3600)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
