"""Memory budget of a rendered deployment: container requests and limits against the nodes,
JVM heaps against their containers, Aerospike namespaces against Aerospike's limit.

The container figures come from the rendered manifests (what would be applied); the heap and
namespace sizes from the profile, which the templates turn into JVM flags and aerospike.conf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from amctl.k8s.profile import Flink, Profile, memory_bytes
from amctl.k8s.render import Manifest

MiB = 2**20
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
METASPACE = 256 * MiB  # taskmanager.memory.jvm-metaspace.size, Flink's default
# what one slot's RocksDB needs at least: Flink gives half to write buffers and the rest to the block cache
ROCKSDB_PER_SLOT = 128 * MiB


def fmt_mib(value: int) -> str:
    return f"{value / MiB:,.0f} MiB"


@dataclass(frozen=True)
class ContainerBudget:
    """One container of one workload, with its replica count (an HPA's maximum when it scales the workload)."""

    container: str
    workload: str
    replicas: int
    request: int
    limit: int
    one_off: bool = False  # a Job: runs once, then frees its memory

    @property
    def total_request(self) -> int:
        return self.request * self.replicas

    @property
    def total_limit(self) -> int:
        return self.limit * self.replicas


@dataclass(frozen=True)
class Check:
    """`used` must not exceed `available`."""

    name: str
    where: str
    used: int
    available: int

    @property
    def ok(self) -> bool:
        return self.used <= self.available

    @property
    def problem(self) -> str:
        return (f"{self.name} over by {fmt_mib(self.used - self.available)} in {self.where}: "
                f"{fmt_mib(self.used)} of {fmt_mib(self.available)}")


@dataclass
class Budget:
    profile: Profile
    containers: list[ContainerBudget]
    checks: list[Check] = field(default_factory=list)

    @property
    def steady(self) -> list[ContainerBudget]:
        return [c for c in self.containers if not c.one_off]

    @property
    def problems(self) -> list[str]:
        return [c.problem for c in self.checks if not c.ok]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile.name,
            "ok": self.ok,
            "containers": [{**c.__dict__, "totalRequest": c.total_request, "totalLimit": c.total_limit}
                           for c in self.containers],
            "checks": [{**c.__dict__, "ok": c.ok} for c in self.checks],
            "problems": self.problems,
        }


def _autoscaled(manifests: list[Manifest]) -> dict[str, int]:
    """Deployment name → the maximum replicas an HPA may scale it to."""
    return {m["spec"]["scaleTargetRef"]["name"]: int(m["spec"]["maxReplicas"])
            for m in manifests if m["kind"] == "HorizontalPodAutoscaler"}


def containers(manifests: list[Manifest]) -> list[ContainerBudget]:
    """Every long-running and one-off container with its memory request and limit."""
    scaled = _autoscaled(manifests)
    found = []
    for m in manifests:
        if m["kind"] not in WORKLOAD_KINDS:
            continue
        name = m["metadata"]["name"]
        replicas = 1 if m["kind"] == "Job" else scaled.get(name, int(m["spec"].get("replicas", 1)))
        for c in m["spec"]["template"]["spec"]["containers"]:
            resources = c.get("resources", {})
            limit = resources.get("limits", {}).get("memory")
            request = resources.get("requests", {}).get("memory", limit)
            if limit is None:
                raise ValueError(f"{m['kind']}/{name} container {c['name']} has no memory limit")
            found.append(ContainerBudget(c["name"], f"{m['kind']}/{name}", replicas, memory_bytes(request),
                                         memory_bytes(limit), one_off=m["kind"] == "Job"))
    return found


def managed_memory(flink: Flink) -> int:
    """The TaskManager's managed memory as Flink derives it: the process size less the JVM overhead (10%, at least
    192 MiB, at most 1 GiB) and metaspace (256 MiB), times the managed fraction."""
    process = memory_bytes(flink.taskmanager_process)
    overhead = min(max(process // 10, 192 * MiB), 1024 * MiB)
    return int((process - overhead - METASPACE) * flink.managed_fraction)


def _limit_of(found: list[ContainerBudget], container: str) -> int:
    return next(c.limit for c in found if c.container == container)


def _inner_checks(profile: Profile, found: list[ContainerBudget]) -> list[Check]:
    """What runs inside a container against that container's limit."""
    kafka, ui, submitter, flink = profile.kafka, profile.kafka_ui, profile.submitter, profile.flink
    return [
        Check("JVM heap + overhead", "kafka", memory_bytes(kafka.heap) + memory_bytes(kafka.overhead),
              _limit_of(found, "kafka")),
        Check("JVM heap + overhead", "kafka-ui", memory_bytes(ui.heap) + memory_bytes(ui.overhead),
              _limit_of(found, "kafka-ui")),
        Check("JVM heap + overhead", "rule-job-submit",
              memory_bytes(submitter.heap) + memory_bytes(submitter.overhead), _limit_of(found, "rule-job-submit")),
        Check("Flink process size", "flink-jobmanager", memory_bytes(flink.jobmanager_process),
              _limit_of(found, "flink-jobmanager")),
        Check("Flink process size + Python", "flink-taskmanager",
              memory_bytes(flink.taskmanager_process) + memory_bytes(flink.python_headroom),
              _limit_of(found, "flink-taskmanager")),
        Check(f"RocksDB's managed memory ({fmt_mib(ROCKSDB_PER_SLOT)} per slot)", "flink-taskmanager",
              ROCKSDB_PER_SLOT * flink.slots, managed_memory(flink)),
        Check("namespaces + asd", "aerospike",
              sum(memory_bytes(ns.size) for ns in profile.aerospike.namespaces) + memory_bytes(profile.aerospike.base),
              _limit_of(found, "aerospike")),
    ]


def compute(profile: Profile, manifests: list[Manifest]) -> Budget:
    """The budget of `manifests` (rendered from `profile`) with every check evaluated."""
    found = containers(manifests)
    budget = Budget(profile, found)
    nodes, node_memory = profile.node.count, memory_bytes(profile.node.memory)
    allocatable = memory_bytes(profile.node.allocatable)
    steady = budget.steady
    one_offs = [c for c in found if c.one_off]
    largest_one_off = max(one_offs, key=lambda c: c.request, default=None)
    largest = ", ".join(f"{c.container} {fmt_mib(c.total_limit)}"
                        for c in sorted(steady, key=lambda c: -c.total_limit)[:3])
    where_nodes = f"{nodes} node(s) x {profile.node.memory} (largest: {largest})"
    budget.checks.append(Check("limits", where_nodes, sum(c.total_limit for c in steady), nodes * node_memory))
    budget.checks.append(Check(
        "requests" + (f" (+ {largest_one_off.container} while it runs)" if largest_one_off else ""),
        f"{nodes} node(s) x {profile.node.allocatable} allocatable",
        sum(c.total_request for c in steady) + (largest_one_off.request if largest_one_off else 0),
        nodes * allocatable,
    ))
    for c in found:
        if c.request > c.limit:
            budget.checks.append(Check("request above limit", c.container, c.request, c.limit))
        if c.request > allocatable:
            budget.checks.append(Check("request larger than a node", c.container, c.request, allocatable))
    budget.checks.extend(_inner_checks(profile, found))
    return budget
