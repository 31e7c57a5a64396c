"""Configuration classes, read from the environment once at start-up.

``APP_ENV`` (or the Node service's ``NODE_ENV``) picks the class: ``production``, ``development`` (the
default) or ``testing``. Production refuses to start without the secrets it cannot safely invent.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import sys
from datetime import timedelta
from typing import NoReturn
from urllib.parse import unquote_plus


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


class ConfigurationError(RuntimeError):
    """Raised at start-up when the environment cannot produce a safe configuration."""


# sysexits.h EX_CONFIG: the exit status of every entry point (scripts/serve and gunicorn, ``ledger``,
# ``flask --app wsgi``) refusing to start on a configuration error.
EXIT_CONFIGURATION_ERROR = 78


def explain(error: ConfigurationError) -> str:
    """The one paragraph an operator sees for a configuration error."""
    return (f"Configuration error: {str(error).rstrip('.')}. Nothing was started. Fix the environment (every "
            f"variable is described in .env.example and in the README's Configuration section) and start again.")


def exit_with(error: ConfigurationError) -> NoReturn:
    """Print :func:`explain` on stderr and exit with :data:`EXIT_CONFIGURATION_ERROR`: no traceback."""
    sys.stderr.write(explain(error) + "\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_CONFIGURATION_ERROR)


def preflight() -> None:
    """Check the environment's configuration; on an error, :func:`exit_with` it (used before anything binds a
    port: ``scripts/serve`` runs it before gunicorn starts, ``gunicorn.conf.py``'s ``on_starting`` before it
    listens)."""
    try:
        load_config()
    except ConfigurationError as error:
        exit_with(error)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{name} must be a whole number, got {raw!r}") from exc


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{name} must be a number of seconds, got {raw!r}") from exc
    if not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"{name} must be a number of seconds, got {raw!r}")
    return value


def _check_mongo_uri(uri: str) -> None:
    """Refuse a MONGO_URI the driver could not use, without connecting (and without mongodb+srv's DNS lookups).

    The error names what is wrong but never echoes the URI, which may carry a password.
    """
    from pymongo.errors import ConfigurationError as DriverConfigurationError
    from pymongo.errors import InvalidURI

    try:
        from pymongo.uri_parser_shared import _validate_uri as parse  # pymongo >= 4.11: parses, no DNS
    except ImportError:  # pragma: no cover - older pymongo: the public parser (SRV URIs would need DNS)
        from pymongo.uri_parser import parse_uri as parse

        if uri.startswith("mongodb+srv://"):
            return
    try:
        parse(uri)
    except (InvalidURI, DriverConfigurationError, ValueError) as exc:
        detail = str(exc)
        reason = f": {detail}" if not any(secret in detail for secret in _uri_secrets(uri)) else (
            " (the driver's reason is not shown: it quotes part of the credentials; check that the user name "
            "and password are percent-encoded)")
        raise ConfigurationError(
            f"MONGO_URI is not a usable MongoDB connection string{reason} (expected the form "
            f"mongodb://host1,host2,host3/database?replicaSet=rs0, or unset MONGO_URI for the embedded engine)"
        ) from None


_SECRET_OPTION = re.compile(r"password|secret|token|key|authmechanismproperties", re.IGNORECASE)


def _uri_secrets(uri: str) -> set[str]:
    """Every piece of ``uri`` an error message must not quote: the user info (everything between the scheme and
    the last ``@``, cut at ``:``, ``/`` and ``@``, raw and percent-decoded) and the values of secret options."""
    pieces: set[str] = set()
    scheme_end, at = uri.find("://"), uri.rfind("@")
    if scheme_end != -1 and at > scheme_end:
        pieces.update(re.split(r"[:/@]", uri[scheme_end + 3:at]))
    for option in re.split(r"[&;]", uri.partition("?")[2]):
        name, _, value = option.partition("=")
        if _SECRET_OPTION.search(name):
            pieces.update(re.split(r"[:,]", value))
    return {variant for piece in pieces for variant in (piece, unquote_plus(piece)) if variant}


def _check_rate_limit(name: str, value: str) -> None:
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError:
        raise ConfigurationError(f"{name}={value!r} is not a rate limit (expected e.g. '10 per minute;50 per "
                                 f"hour')") from None


def _storage_timeouts(uri: str) -> dict[str, float]:
    if uri.startswith("mongodb"):
        return {"serverSelectionTimeoutMS": 500, "connectTimeoutMS": 1000, "socketTimeoutMS": 1000}
    if uri.startswith(("redis", "rediss")):
        return {"socket_timeout": 1, "socket_connect_timeout": 1}
    return {}


MAIL_BACKENDS = ("smtp", "log")
# What the Node service's nodemailer Gmail OAuth2 transport read from its .env.
NODE_OAUTH2_VARIABLES = ("CLIENT_ID", "CLIENT_SECRET", "REFRESH_TOKEN", "ACCESS_TOKEN")


def _aliased(name: str, alias: str) -> str | None:
    """``name``, or its alias from the Node service's .env; both set to different values is an error."""
    value, aliased = os.environ.get(name) or None, os.environ.get(alias) or None
    if value and aliased and value != aliased:
        raise ConfigurationError(f"{name} and {alias} are both set, to different values: set only one "
                                 f"({alias} is the Node service's name for {name})")
    return value or aliased


MEMORY_DATA_DIR = ":memory:"
DEFAULT_DATA_DIR = ".ledger-data"
JWT_SECRET_FILE = "jwt-secret"


def data_dir_for(environment: str) -> str:
    """The embedded engine's folder for ``environment``: LEDGER_DATA_DIR (default ``.ledger-data``); the
    test configuration keeps its data in memory unless LEDGER_TEST_DATA_DIR names a folder."""
    if environment in {"testing", "test"}:
        return os.environ.get("LEDGER_TEST_DATA_DIR") or MEMORY_DATA_DIR
    return os.environ.get("LEDGER_DATA_DIR") or DEFAULT_DATA_DIR


def stored_development_secret(data_dir: str) -> str:
    """The development JWT secret kept in the engine's folder (created once, owner-readable only), so a
    restart on the same data does not log everyone out."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, JWT_SECRET_FILE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_urlsafe(48))
            handle.flush()
            os.fsync(handle.fileno())
    for _attempt in range(50):  # another process may be writing it this instant
        with open(path, encoding="ascii") as handle:
            secret = handle.read().strip()
        if len(secret) >= 32:
            return secret
        import time

        time.sleep(0.01)
    raise ConfigurationError(f"{path} does not hold a usable JWT secret: delete it to generate a new one")


class Config:
    """Settings shared by every environment, read from the environment when the object is built."""

    ENV_NAME = "development"
    TESTING = False
    DEBUG = False

    # Fixed settings (not environment-driven).
    JWT_ALGORITHM = "HS256"
    JWT_DECODE_ALGORITHMS = ["HS256"]
    JWT_IDENTITY_CLAIM = "userId"  # the Node service's claim name
    JWT_ACCESS_TOKEN_EXPIRES = timedelta(days=7)
    JWT_TOKEN_LOCATION = ["headers", "cookies"]  # Bearer header first, then the cookie
    JWT_ACCESS_COOKIE_NAME = "token"
    JWT_ACCESS_COOKIE_PATH = "/"
    JWT_COOKIE_SAMESITE = "Lax"
    JWT_COOKIE_CSRF_PROTECT = False  # the Node clients send no CSRF header; SameSite=Lax covers form posts
    JWT_SESSION_COOKIE = False  # the cookie carries Max-Age = token lifetime
    JWT_ENCODE_NBF = False
    MAX_CONTENT_LENGTH = 100 * 1024
    MAX_JSON_DEPTH = 32
    GENERATED_JWT_SECRET = False

    def __init__(self) -> None:
        env = os.environ.get
        # Database: MONGO_URI set -> real MongoDB (a replica set); unset -> the embedded in-memory engine.
        self.MONGO_URI = env("MONGO_URI") or None
        self.MONGO_DB_NAME = env("MONGO_DB_NAME") or None  # default: the URI's database, else banking-ledger
        self.TRANSACTION_TIMEOUT_SECONDS = _env_float("TRANSACTION_TIMEOUT_SECONDS", 10)
        # The embedded engine's folder (MONGO_URI unset): ":memory:" keeps the data in the process only.
        self.LEDGER_DATA_DIR = data_dir_for(self.ENV_NAME)
        self.JWT_SECRET_STORED = False

        self.JWT_SECRET_KEY = env("JWT_SECRET") or None
        self.COOKIE_SECURE = _env_bool("COOKIE_SECURE", False)
        self.BCRYPT_ROUNDS = _env_int("BCRYPT_ROUNDS", 10)

        # The system user is bootstrapped from these at start-up when all three are set.
        self.SYSTEM_USER_EMAIL = env("SYSTEM_USER_EMAIL") or None
        self.SYSTEM_USER_PASSWORD = env("SYSTEM_USER_PASSWORD") or None
        self.SYSTEM_USER_NAME = env("SYSTEM_USER_NAME") or None

        # Email (flask-mail). Without MAIL_SERVER messages are written to the log instead of sent.
        self.MAIL_SERVER = env("MAIL_SERVER") or None
        self.MAIL_PORT = _env_int("MAIL_PORT", 587)
        self.MAIL_USE_TLS = _env_bool("MAIL_USE_TLS", False)
        self.MAIL_USE_SSL = _env_bool("MAIL_USE_SSL", False)
        # MAIL_BACKEND: "smtp" (needs MAIL_SERVER) or "log" (mail is not sent); unset: smtp when MAIL_SERVER is
        # set, else log, which production refuses (see validate_mail).
        self.MAIL_BACKEND = (env("MAIL_BACKEND") or "").strip().lower() or None
        # The Node service's .env names (EMAIL_USER, EMAIL_PASS) are aliases of flask-mail's.
        self.MAIL_USERNAME = _aliased("MAIL_USERNAME", "EMAIL_USER")
        self.MAIL_PASSWORD = _aliased("MAIL_PASSWORD", "EMAIL_PASS")
        self.MAIL_DEFAULT_SENDER = env("MAIL_DEFAULT_SENDER") or "Banking Ledger <no-reply@ledger.local>"
        self.OUTBOX_SENDER_ENABLED = _env_bool("OUTBOX_SENDER_ENABLED", True)
        self.OUTBOX_POLL_SECONDS = _env_float("OUTBOX_POLL_SECONDS", 2)
        self.OUTBOX_MAX_ATTEMPTS = _env_int("OUTBOX_MAX_ATTEMPTS", 8)
        self.OUTBOX_BACKOFF_SECONDS = _env_float("OUTBOX_BACKOFF_SECONDS", 30)  # doubles per attempt
        self.OUTBOX_BACKOFF_MAX_SECONDS = _env_float("OUTBOX_BACKOFF_MAX_SECONDS", 3600)
        self.OUTBOX_LEASE_SECONDS = _env_float("OUTBOX_LEASE_SECONDS", 120)  # > MAIL_TIMEOUT_SECONDS
        # A message whose sender's lease expires this many times (it crashed mid-delivery) is parked.
        self.OUTBOX_MAX_LEASE_EXPIRIES = _env_int("OUTBOX_MAX_LEASE_EXPIRIES", 3)
        # While the SMTP server is unavailable the transport pauses: this long, doubling, capped.
        self.OUTBOX_TRANSPORT_BACKOFF_SECONDS = _env_float("OUTBOX_TRANSPORT_BACKOFF_SECONDS", 10)
        self.OUTBOX_TRANSPORT_BACKOFF_MAX_SECONDS = _env_float("OUTBOX_TRANSPORT_BACKOFF_MAX_SECONDS", 300)
        self.MAIL_TIMEOUT_SECONDS = _env_float("MAIL_TIMEOUT_SECONDS", 10)
        # How often expired holds are marked EXPIRED (tidying only: expiry is exact without it). 0 turns it off.
        self.HOLD_SWEEP_SECONDS = _env_float("HOLD_SWEEP_SECONDS", 30)

        self.LOG_LEVEL = env("LOG_LEVEL") or "INFO"
        # INFO lines (the access line of every request) are written by a thread of their own in batches, at most
        # this many seconds after they are logged; WARNING and above at once. 0 writes every line at once.
        self.LOG_FLUSH_SECONDS = _env_float("LOG_FLUSH_SECONDS", 0.05)
        # How many reverse proxies (load balancers) sit in front of the app. Their X-Forwarded-For/-Proto are
        # trusted that many hops deep, so per-address rate limits see the client, not the balancer.
        self.TRUSTED_PROXIES = _env_int("TRUSTED_PROXIES", 0)

        # Rate limits (flask-limiter reads the RATELIMIT_* keys itself). Memory storage is per process; set
        # RATELIMIT_STORAGE_URI=redis://... or mongodb://... to share the counters between workers and machines.
        self.RATELIMIT_ENABLED = _env_bool("RATELIMIT_ENABLED", True)
        self.RATELIMIT_STORAGE_URI = env("RATELIMIT_STORAGE_URI") or "memory://"
        # A shared store that stops answering must cost a request milliseconds, not the drivers' 30 s default,
        # before the limiter falls back to memory.
        self.RATELIMIT_STORAGE_OPTIONS = _storage_timeouts(self.RATELIMIT_STORAGE_URI)
        self.RATELIMIT_STRATEGY = env("RATELIMIT_STRATEGY") or "moving-window"
        self.RATELIMIT_HEADERS_ENABLED = True
        self.RATELIMIT_IN_MEMORY_FALLBACK_ENABLED = True  # a dead shared storage degrades to per-process limits
        # Per email (brute force on one account; repeated sign-ups of one address): strict.
        self.RATELIMIT_LOGIN = env("RATELIMIT_LOGIN") or "10 per minute;50 per hour"
        self.RATELIMIT_REGISTER = env("RATELIMIT_REGISTER") or "5 per minute;20 per hour"
        # Per client address (spraying many accounts, mass sign-up): looser, since one address may be a whole
        # office behind NAT, or a proxy when TRUSTED_PROXIES is not set.
        self.RATELIMIT_LOGIN_PER_ADDRESS = env("RATELIMIT_LOGIN_PER_ADDRESS") or "300 per minute;3000 per hour"
        self.RATELIMIT_REGISTER_PER_ADDRESS = env("RATELIMIT_REGISTER_PER_ADDRESS") or "100 per minute;1000 per hour"
        # Per authenticated user.
        self.RATELIMIT_TRANSFER = env("RATELIMIT_TRANSFER") or "1200 per minute"
        # CORS is off unless an allow-list of origins is given (comma-separated, exact origins).
        self.CORS_ORIGINS = [o.strip() for o in (env("CORS_ORIGINS") or "").split(",") if o.strip()]

    def check(self) -> None:
        """Refuse values that cannot work in any environment (each raises :class:`ConfigurationError`)."""
        if self.MONGO_URI:
            _check_mongo_uri(self.MONGO_URI)
        for name in ("RATELIMIT_LOGIN", "RATELIMIT_LOGIN_PER_ADDRESS", "RATELIMIT_REGISTER",
                     "RATELIMIT_REGISTER_PER_ADDRESS", "RATELIMIT_TRANSFER"):
            _check_rate_limit(name, getattr(self, name))

    def validate(self) -> None:
        """Fill in development defaults; production overrides this to make missing secrets fatal."""
        self.check()
        self.validate_mail()
        if not self.JWT_SECRET_KEY:
            if not self.MONGO_URI and self.LEDGER_DATA_DIR != MEMORY_DATA_DIR:
                self.JWT_SECRET_KEY = stored_development_secret(self.LEDGER_DATA_DIR)
                self.JWT_SECRET_STORED = True
            else:
                self.JWT_SECRET_KEY = secrets.token_urlsafe(48)
            self.GENERATED_JWT_SECRET = True

    def validate_mail(self) -> None:
        """Refuse mail settings that would silently not work: an unknown backend, ``smtp`` without a server,
        two different values for one credential, or the Node service's Gmail OAuth2 variables.

        Production also refuses to run without ``MAIL_SERVER`` unless ``MAIL_BACKEND=log`` turns mail off
        explicitly (see :class:`ProductionConfig`).
        """
        if self.MAIL_BACKEND not in (None, *MAIL_BACKENDS):
            raise ConfigurationError(f"MAIL_BACKEND={self.MAIL_BACKEND!r} is not one of {list(MAIL_BACKENDS)}")
        if self.MAIL_BACKEND == "smtp" and not self.MAIL_SERVER:
            raise ConfigurationError("MAIL_BACKEND=smtp needs MAIL_SERVER (the SMTP host)")
        oauth = [name for name in NODE_OAUTH2_VARIABLES if os.environ.get(name)]
        if oauth:
            raise ConfigurationError(
                f"{', '.join(oauth)} {'is' if len(oauth) == 1 else 'are'} set: these are the Node service's Gmail "
                "OAuth2 mail settings, which this service does not support (it would send nothing with them). "
                "Send through SMTP with a password instead: MAIL_SERVER=smtp.gmail.com MAIL_PORT=587 "
                "MAIL_USE_TLS=true EMAIL_USER=<address> EMAIL_PASS=<an app password>, or any SMTP relay; then "
                f"unset {', '.join(oauth)}"
            )


class DevelopmentConfig(Config):
    ENV_NAME = "development"


class TestingConfig(Config):
    """The test suite's settings: fast bcrypt, a fixed secret, no background threads, no real mail."""

    ENV_NAME = "testing"
    TESTING = True

    def __init__(self) -> None:
        super().__init__()
        self.MONGO_URI = os.environ.get("LEDGER_TEST_MONGO_URI") or None
        self.MONGO_DB_NAME = None
        self.JWT_SECRET_KEY = "test-secret-not-for-production-0123456789abcdef"
        self.BCRYPT_ROUNDS = 4
        self.SYSTEM_USER_EMAIL = self.SYSTEM_USER_PASSWORD = self.SYSTEM_USER_NAME = None
        self.MAIL_SERVER = None
        self.MAIL_BACKEND = None
        self.MAIL_USERNAME = self.MAIL_PASSWORD = None
        self.OUTBOX_SENDER_ENABLED = False
        self.HOLD_SWEEP_SECONDS = 0.0
        self.LOG_FLUSH_SECONDS = 0.0  # tests read a request's log lines as soon as it has answered
        self.RATELIMIT_ENABLED = False  # tests that check limits build their app with RATELIMIT_ENABLED=True
        self.RATELIMIT_STORAGE_URI = "memory://"

    def validate_mail(self) -> None:
        """The suite sets its own mail settings (above); the developer's mail environment is not read."""


class ProductionConfig(Config):
    ENV_NAME = "production"

    def __init__(self) -> None:
        super().__init__()
        self.COOKIE_SECURE = _env_bool("COOKIE_SECURE", True)

    def validate(self) -> None:
        for variable, value in (("JWT_SECRET", self.JWT_SECRET_KEY), ("MONGO_URI", self.MONGO_URI)):
            if not value:
                raise ConfigurationError(
                    f"{variable} is not set: production refuses to start without it "
                    f"(set APP_ENV=development to run with the embedded engine and a generated secret)"
                )
        if len(self.JWT_SECRET_KEY) < 32:
            raise ConfigurationError("JWT_SECRET is too short: production needs at least 32 characters")
        self.check()
        self.validate_mail()
        if not self.MAIL_SERVER and self.MAIL_BACKEND != "log":
            raise ConfigurationError(
                "MAIL_SERVER is not set: production refuses to start without a mail server, since every email "
                "would be dropped. Set MAIL_SERVER (and MAIL_PORT, MAIL_USE_TLS, EMAIL_USER, EMAIL_PASS), or set "
                "MAIL_BACKEND=log to run without sending mail on purpose"
            )


CONFIGS = {
    "development": DevelopmentConfig,
    "testing": TestingConfig,
    "test": TestingConfig,
    "production": ProductionConfig,
}


def environment_name() -> str:
    """The environment the process runs in: APP_ENV, else the Node service's NODE_ENV, else development."""
    return (os.environ.get("APP_ENV") or os.environ.get("NODE_ENV") or "development").strip().lower()


def load_config(name: str | None = None) -> Config:
    """Build and validate the configuration object for ``name`` (default: from the environment)."""
    name = (name or environment_name()).lower()
    try:
        config_class = CONFIGS[name]
    except KeyError as exc:
        raise ConfigurationError(f"APP_ENV={name!r} is not one of {sorted(set(CONFIGS))}") from exc
    config = config_class()
    config.validate()
    return config
