"""Settings shared by every service process, read once from AM_* environment variables."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from psycopg.conninfo import make_conninfo
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.domain.email import FrequencyCap
from server.runtime.api_keys import read_api_keys

PLACEHOLDER_PASSWORDS = frozenset({"", "postgres", "password", "changeme", "admin"})


class Environment(StrEnum):
    LOCAL = "local"
    K8S = "k8s"


class ServiceSettings(BaseSettings):
    """One settings object per process; built by `get_settings()` and passed to `create_app`."""

    # hide_input_in_errors: a refused setting must not print the secrets it was given
    model_config = SettingsConfigDict(env_prefix="AM_", env_nested_delimiter="__", hide_input_in_errors=True)

    environment: Environment = Environment.LOCAL
    host: str = "127.0.0.1"
    port: int = 0
    database_url: str = "postgresql://postgres@127.0.0.1:30432/audience"
    database_password: SecretStr = SecretStr("")
    database_pool_max: int = 10
    kafka_bootstrap: str = "127.0.0.1:30092"
    kafka_idempotence: bool = Field(default=True, description="Idempotent producers; off for the local durable "
                                    "broker, which can acknowledge a lost batch's retry as a duplicate")
    kafka_linger_ms: float = Field(default=5.0, ge=0, le=1000, description="How long a service's producer waits "
                                   "to fill a batch: the floor of every acknowledgement's latency, and fewer, "
                                   "larger produce requests for the local broker")
    aerospike_hosts: str = Field(default="", description="host:port,… — set on Kubernetes: profiles and caches "
                                                         "then live in Aerospike instead of PostgreSQL/memory")
    kafka_session_timeout_ms: int = Field(default=6000, ge=1000, le=300000, description="Consumer group session "
                                          "timeout; the local broker makes a joining member wait half of it")
    topic_prefix: str = Field(default="", description="Prepended to every topic name (tests use one per test)")
    dependency_timeout_s: float = 2.0
    startup_wait_s: float = 30.0
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 30025
    smtp_timeout_s: float = 10.0
    # Email worker
    email_from: str = "Audience Manager <campaigns@audience-manager.local>"
    email_max_attempts: int = Field(default=5, description="Tries per mail before it is dead-lettered")
    email_retry_base_s: float = Field(default=0.5, description="First retry delay; doubles on every try")
    email_concurrency: int = Field(default=8, description="Mails sent at the same time")
    email_claim_lease_s: float = Field(default=120.0, description="A mail claimed longer ago is failed as in doubt")
    email_frequency_cap_max: int | None = Field(default=None, ge=1, description="Default frequency cap of a "
                                                "campaign that sets none: at most this many mails per address…")
    email_frequency_cap_within: str = Field(default="P1D", description="…within this ISO-8601 duration")
    email_unsubscribe_mailto: str = Field(default="unsubscribe@audience-manager.local", description="The "
                                          "List-Unsubscribe mailto: address (its subject carries the token)")
    public_base_url: str = Field(default="", description="Where recipients reach the Communication API (the "
                                 "unsubscribe links); default: its own http://host:port")
    smtp_pool_size: int = Field(default=8, ge=1, description="SMTP connections the worker keeps open and reuses")
    smtp_pool_idle_s: float = Field(default=30.0, description="An SMTP connection idle longer is closed")
    email_dkim_domain: str = Field(default="", description="DKIM signing domain (d=); signing is off while empty")
    email_dkim_selector: str = Field(default="", description="DKIM selector (s=)")
    email_dkim_private_key: SecretStr = Field(default=SecretStr(""), description="DKIM private key, PEM")
    email_dkim_key_file: Path | None = Field(default=None, description="DKIM private key from a file "
                                             "(a mounted Secret)")
    # Destinations (webhooks): the Communication API stores them, the delivery worker calls them
    secrets_key: SecretStr = Field(default=SecretStr(""), description="Key that seals destination secrets and "
                                   "headers in the database (Fernet, urlsafe base64 of 32 bytes); amctl sets it")
    destination_timeout_s: float = Field(default=10.0, description="One webhook call, connect to last byte")
    destination_retry_base_s: float = Field(default=1.0, description="First retry delay; doubles, with jitter")
    destination_retry_max_s: float = Field(default=600.0, description="The longest wait between two tries")
    destination_give_up_s: float = Field(default=86400.0, description="A change still undelivered this long "
                                         "after it was first tried is failed (replay resends it)")
    destination_pause_after: int = Field(default=20, description="Consecutive failed calls that pause a "
                                         "destination until it is resumed")
    destination_concurrency: int = Field(default=8, description="Calls in flight per destination")
    destination_block_private: bool | None = Field(default=None, description="Refuse targets on private, loopback "
                                                   "or link-local addresses; default: on Kubernetes only")
    destination_allow: str = Field(default="", description="host, IP or CIDR,… allowed despite "
                                   "destination_block_private")
    log_level: str = "info"
    # API keys: off while both are empty (the local default; the APIs refuse that on Kubernetes);
    # see server/runtime/auth.py
    api_keys: SecretStr = Field(default=SecretStr(""), description="key:scope,… with scope read, write or admin")
    api_keys_file: Path | None = Field(default=None, description="A file of key:scope lines (a mounted Secret)")
    allow_anonymous: bool = Field(default=False, description="On Kubernetes, let the APIs start without API keys "
                                  "(every caller may do everything): only for an open demo, on purpose")
    # Ingestion API
    rate_limit_per_s: float = Field(default=2000.0, description="Sustained events/s per client (token bucket)")
    rate_limit_burst: int = Field(default=4000, description="Events a client may send at once")
    dedupe_window_s: float = Field(default=600.0, description="A repeated eventId within this window is dropped")
    produce_timeout_s: float = Field(default=5.0, description="How long to wait for the broker's ack before 503")

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> ServiceSettings:
        if (
            self.environment is Environment.K8S
            and self.database_password.get_secret_value() in PLACEHOLDER_PASSWORDS
        ):
            raise ValueError("AM_DATABASE_PASSWORD is unset or a placeholder; set it from the Kubernetes Secret")
        read_api_keys(self.api_keys.get_secret_value(), self.api_keys_file)  # refuse to start with a bad entry
        try:
            self.default_frequency_cap  # noqa: B018 -- refuse to start with a cap that cannot be read
        except ValueError as exc:
            raise ValueError(f"AM_EMAIL_FREQUENCY_CAP_WITHIN: {exc}") from None
        return self

    @property
    def default_frequency_cap(self) -> FrequencyCap | None:
        """The cap of campaigns that set none (None: no default cap)."""
        if self.email_frequency_cap_max is None:
            return None
        return FrequencyCap.parse(self.email_frequency_cap_max, self.email_frequency_cap_within)

    @property
    def unsubscribe_base_url(self) -> str:
        """The Communication API as recipients reach it, without a trailing slash."""
        return (self.public_base_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def blocks_private_destinations(self) -> bool:
        """Whether webhook targets on private addresses are refused (unless allow-listed)."""
        if self.destination_block_private is not None:
            return self.destination_block_private
        return self.environment is Environment.K8S

    def topic(self, name: str) -> str:
        """The concrete topic name for one of the names in `server.stores.topics.TOPICS`."""
        return f"{self.topic_prefix}{name}"

    @property
    def database_conninfo(self) -> str:
        """`database_url` (a URL or key=value pairs) with the password added the way libpq parses it."""
        password = self.database_password.get_secret_value()
        return make_conninfo(self.database_url, password=password) if password else self.database_url
