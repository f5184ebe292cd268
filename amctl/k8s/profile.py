"""Deployment profiles: the values the Kubernetes templates are rendered with (`templates/k8s/profiles/*.yaml`)."""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import yaml
from kubernetes import utils as _kube_utils
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from amctl.paths import REPO_ROOT

TEMPLATES_DIR = REPO_ROOT / "templates" / "k8s"
PROFILES_DIR = TEMPLATES_DIR / "profiles"
DEFAULT_PROFILE = "demo-8g"
# the kubernetes client has no type hints: the API server's own quantity grammar, used as untyped
parse_quantity: Any = _kube_utils.parse_quantity


class ProfileError(ValueError):
    """A profile that is missing or does not describe a deployment."""


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (`512Mi`, `2Ti`, `1500M`, `129e6`, `1024`) in whole bytes, read as the API
    server reads it (a fraction of a byte rounds up)."""
    try:
        value = Decimal(parse_quantity(quantity))
    except ValueError:
        raise ValueError(f"not a memory quantity: {quantity!r}") from None
    if value < 0:
        raise ValueError(f"a memory quantity cannot be negative: {quantity!r}")
    return math.ceil(value)


def mib(quantity: str) -> int:
    """A memory quantity in whole MiB (what JVM flags and Aerospike sizes are written in)."""
    return memory_bytes(quantity) // 2**20


def _memory_quantity(value: str) -> str:
    memory_bytes(value)  # raises ValueError for anything that is not a quantity
    return value


Memory = Annotated[str, AfterValidator(_memory_quantity)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(Strict):
    """One container's memory limit and request, and its CPU request (no CPU limit: it would only throttle)."""

    replicas: int = Field(default=1, ge=0)
    memory: Memory
    memory_request: Memory
    cpu_request: str = "100m"


class Node(Strict):
    count: int = Field(ge=1)
    memory: Memory = Field(description="Memory of one node: every steady-state limit together must fit")
    allocatable: Memory = Field(description="What the scheduler hands out on one node: requests must fit")


class Images(Strict):
    service: str
    flink: str
    pull_policy: str = "IfNotPresent"

    @field_validator("service", "flink")
    @classmethod
    def _pinned(cls, value: str) -> str:
        if ":" not in value or value.endswith(":latest"):
            raise ValueError(f"image {value!r} needs a fixed tag (not latest)")
        return value


class Jvm(Strict):
    heap: Memory
    overhead: Memory = Field(description="Metaspace, threads, code cache and direct buffers beside the heap")


class Flink(Strict):
    jobmanager_process: Memory = Field(description="jobmanager.memory.process.size")
    taskmanager_process: Memory = Field(description="taskmanager.memory.process.size")
    python_headroom: Memory = Field(description="Room the embedded Python interpreter needs beside the JVM")
    managed_fraction: float = Field(default=0.35, gt=0, lt=1, description="taskmanager.memory.managed.fraction: "
                                    "RocksDB's cache and write buffers, where the job's keyed state lives")
    slots: int = Field(ge=1)
    parallelism: int = Field(ge=1)


class AerospikeNamespace(Strict):
    name: str
    size: Memory
    ttl_s: int = 0


class Aerospike(Strict):
    base: Memory = Field(description="asd's own memory beside the namespaces")
    namespaces: list[AerospikeNamespace]


class Autoscaling(Strict):
    min_replicas: int = 2
    max_replicas: int = 6
    cpu_utilization: int = 70


class Profile(Strict):
    """Everything that differs between deployments; the templates read nothing else."""

    name: str
    description: str
    namespace: str
    node: Node
    images: Images
    persistence: bool = Field(description="PersistentVolumeClaims (true) or emptyDir (false)")
    storage_size: dict[str, str] = Field(default_factory=dict)
    disruption_budgets: bool = False
    autoscaling: Autoscaling | None = None
    exporters: dict[str, bool]
    node_ports: dict[str, int]
    public_base_url: str = Field(default="", description="Where recipients reach the Communication API's "
                                 "unsubscribe links; default: http://localhost:<its node port>")
    components: dict[str, Resources]
    kafka: Jvm
    kafka_ui: Jvm
    submitter: Jvm
    flink: Flink
    aerospike: Aerospike

    @property
    def unsubscribe_base_url(self) -> str:
        return self.public_base_url or f"http://localhost:{self.node_ports['communication-api']}"

    def resources(self, component: str) -> Resources:
        return self.components[component]


def profile_path(name: str, directory: Path = PROFILES_DIR) -> Path:
    return directory / f"{name}.yaml"


def available_profiles(directory: Path = PROFILES_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load_profile(name: str, directory: Path = PROFILES_DIR) -> Profile:
    """Read and validate `templates/k8s/profiles/<name>.yaml`, or a profile file when `name` is a path."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else profile_path(name, directory)
    if not path.exists():
        raise ProfileError(f"no profile '{name}' (known: {', '.join(available_profiles(directory))})")
    try:
        return Profile.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise ProfileError(f"profile '{name}': {where}: {first['msg']}") from None
