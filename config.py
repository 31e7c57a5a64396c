"""Configuration classes, read from the environment once at start-up.

``APP_ENV`` (or the Node service's ``NODE_ENV``) picks the class: ``production``, ``development`` (the
default) or ``testing``. Production refuses to start without the secrets it cannot safely invent.
"""

from __future__ import annotations

import os
import secrets
from datetime import timedelta


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise RuntimeError(f"{name} must be an integer, got {raw!r}") from exc


def _storage_timeouts(uri: str) -> dict[str, float]:
    if uri.startswith("mongodb"):
        return {"serverSelectionTimeoutMS": 500, "connectTimeoutMS": 1000, "socketTimeoutMS": 1000}
    if uri.startswith(("redis", "rediss")):
        return {"socket_timeout": 1, "socket_connect_timeout": 1}
    return {}


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


class ConfigurationError(RuntimeError):
    """Raised at start-up when the environment cannot produce a safe configuration."""


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
        self.TRANSACTION_TIMEOUT_SECONDS = float(env("TRANSACTION_TIMEOUT_SECONDS") or 10)
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
        self.MAIL_USERNAME = env("EMAIL_USER") or None
        self.MAIL_PASSWORD = env("EMAIL_PASS") or None
        self.MAIL_DEFAULT_SENDER = env("MAIL_DEFAULT_SENDER") or "Banking Ledger <no-reply@ledger.local>"
        self.OUTBOX_SENDER_ENABLED = _env_bool("OUTBOX_SENDER_ENABLED", True)
        self.OUTBOX_POLL_SECONDS = float(env("OUTBOX_POLL_SECONDS") or 2)
        self.OUTBOX_MAX_ATTEMPTS = _env_int("OUTBOX_MAX_ATTEMPTS", 8)
        self.OUTBOX_BACKOFF_SECONDS = float(env("OUTBOX_BACKOFF_SECONDS") or 30)  # doubles per attempt
        self.OUTBOX_BACKOFF_MAX_SECONDS = float(env("OUTBOX_BACKOFF_MAX_SECONDS") or 3600)
        self.OUTBOX_LEASE_SECONDS = float(env("OUTBOX_LEASE_SECONDS") or 120)  # > MAIL_TIMEOUT_SECONDS
        self.MAIL_TIMEOUT_SECONDS = float(env("MAIL_TIMEOUT_SECONDS") or 10)

        self.LOG_LEVEL = env("LOG_LEVEL") or "INFO"
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

    def validate(self) -> None:
        """Fill in development defaults; production overrides this to make missing secrets fatal."""
        if not self.JWT_SECRET_KEY:
            if not self.MONGO_URI and self.LEDGER_DATA_DIR != MEMORY_DATA_DIR:
                self.JWT_SECRET_KEY = stored_development_secret(self.LEDGER_DATA_DIR)
                self.JWT_SECRET_STORED = True
            else:
                self.JWT_SECRET_KEY = secrets.token_urlsafe(48)
            self.GENERATED_JWT_SECRET = True


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
        self.OUTBOX_SENDER_ENABLED = False
        self.RATELIMIT_ENABLED = False  # tests that check limits build their app with RATELIMIT_ENABLED=True
        self.RATELIMIT_STORAGE_URI = "memory://"


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
