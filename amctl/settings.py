"""Settings of the CLI and of the local stack it supervises: ports, paths, target."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Target(StrEnum):
    LOCAL = "local"
    K8S = "k8s"


def _default_state_dir() -> Path:
    return Path.home() / ".local" / "state" / "amctl"


class Ports(BaseSettings):
    """The fixed localhost ports of DESIGN.md; each can be moved with AMCTL_PORT_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="AMCTL_PORT_")

    segment_api: int = 30081
    ingestion_api: int = 30082
    communication_api: int = 30083
    rule_engine: int = 30084
    email_worker: int = 30085
    delivery_worker: int = 30086
    webhook_sink: int = 30087  # the local webhook receiver destinations deliver to in the demo
    postgres: int = 30432
    kafka: int = 30092
    s3: int = 30093  # the broker's S3 server, where its records live
    flink_ui: int = 30881
    flink_rpc: int = 30882  # the JobManager's RPC port (amctl up --flink session)
    prometheus: int = 30090
    smtp: int = 30025


class AmctlSettings(BaseSettings):
    """Everything amctl needs to know about where the platform runs."""

    model_config = SettingsConfigDict(env_prefix="AMCTL_")

    target: Target = Target.LOCAL
    state_dir: Path = Field(default_factory=_default_state_dir)
    ports: Ports = Field(default_factory=Ports)
    host: str = "127.0.0.1"
    topic_prefix: str = ""
    startup_timeout_s: float = 60.0
    k8s_poll_s: float = Field(default=2.0, description="How often `amctl up/down --target k8s` looks at the cluster")
    api_key: SecretStr | None = Field(default=None, description="Sent as X-API-Key to every service (AMCTL_API_KEY)")
    # every fetch lists all the batches a partition holds: a longer window slows the broker down
    broker_keep_s: float = Field(default=0.0, ge=0, description="The local broker keeps every record at least this "
                                 "long, then drops it once every platform group that reads it has committed past "
                                 "it (AMCTL_BROKER_KEEP_S)")
    prometheus_binary: Path = Field(default=Path("/usr/bin/prometheus"),
                                    description="Prometheus of `amctl up --with-monitoring` (AMCTL_PROMETHEUS_BINARY)")

    def url(self, port: int) -> str:
        return f"http://{self.host}:{port}"

    def auth_headers(self) -> dict[str, str]:
        """The X-API-Key header when AMCTL_API_KEY is set, for every call amctl makes to a service."""
        return {"X-API-Key": self.api_key.get_secret_value()} if self.api_key else {}


@lru_cache(maxsize=1)
def get_settings() -> AmctlSettings:
    return AmctlSettings()
