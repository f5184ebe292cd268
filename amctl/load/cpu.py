"""Where the CPU went: CPU seconds per second (cores) per component of the local stack, from /proc.

A component is a process and everything it started (postgres and its backends, the rule engine and its
JVM): each process is charged to its nearest ancestor that is a component's root, so a component named
inside another (the rule engine's JVM inside the rule engine) is counted on its own, not twice. A process
counts its own utime+stime and the cutime+cstime of the children it reaped, so a backend that exits
during a step is still charged to its component. Linux only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amctl.settings import AmctlSettings

PROC = Path("/proc")
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of one `/proc/<pid>/stat` this module needs; CPU in clock ticks."""

    pid: int
    comm: str
    ppid: int
    ticks: int  # utime + stime
    reaped_ticks: int  # cutime + cstime: children that exited and were waited for


def parse_stat(text: str) -> ProcStat:
    """One `/proc/<pid>/stat` line; `comm` may hold spaces and parentheses, so split at the last ')'."""
    head, _, rest = text.rpartition(")")
    pid, _, comm = head.partition(" (")
    fields = rest.split()  # fields[0] is the state (field 3 of proc(5)), so field n is fields[n - 3]
    return ProcStat(int(pid), comm, int(fields[1]), int(fields[11]) + int(fields[12]),
                    int(fields[13]) + int(fields[14]))


def read_processes(proc: Path = PROC) -> dict[int, ProcStat]:
    """Every process now running (or a zombie not yet reaped), by pid."""
    stats = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stats[int(entry.name)] = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):  # gone between listing and reading
            continue
    return stats


def machine_busy_ticks(stat_text: str) -> int:
    """Busy ticks of all CPUs from `/proc/stat`: user, nice, system, irq, softirq, steal (not idle, iowait;
    guest time is already inside user)."""
    fields = [int(value) for value in stat_text.splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq + steal


def owners(stats: Mapping[int, ProcStat], roots: Mapping[str, int]) -> dict[int, str]:
    """The component each process belongs to: that of its nearest ancestor (or itself) among `roots`."""
    by_pid = {pid: name for name, pid in roots.items()}
    result: dict[int, str] = {}
    for pid in stats:
        chain: list[int] = []
        at = pid
        while at in stats and at not in by_pid and at not in result and len(chain) < 512:
            chain.append(at)
            at = stats[at].ppid
        owner = by_pid.get(at) or result.get(at)
        if owner is not None:
            result.update(dict.fromkeys([*chain, pid], owner))
    return result


def ticks_by_component(stats: Mapping[int, ProcStat], roots: Mapping[str, int]) -> dict[str, int]:
    """CPU ticks used so far by each component's processes (and the children they reaped)."""
    totals = dict.fromkeys(roots, 0)
    for pid, owner in owners(stats, roots).items():
        totals[owner] += stats[pid].ticks + stats[pid].reaped_ticks
    return totals


def children_named(stats: Mapping[int, ProcStat], parent: int, comm: str) -> list[int]:
    """Direct children of `parent` whose command name is `comm` (the rule engine's `java`)."""
    return sorted(pid for pid, stat in stats.items() if stat.ppid == parent and stat.comm == comm)


@dataclass(frozen=True)
class CpuSnapshot:
    """Ticks per component and of the whole machine at one moment."""

    at: float  # time.monotonic()
    components: dict[str, int]
    machine: int


def snapshot(roots: Mapping[str, int], proc: Path = PROC) -> CpuSnapshot:
    """The CPU ticks each component (and the machine) has used up to now."""
    at = time.monotonic()
    machine = machine_busy_ticks((proc / "stat").read_text())
    return CpuSnapshot(at, ticks_by_component(read_processes(proc), roots), machine)


@dataclass(frozen=True)
class CpuUse:
    """Cores used (CPU seconds per second) between two snapshots: per component, by the whole machine, and
    by what ran outside the components (the machine's busy time not charged to any of them)."""

    by_component: dict[str, float]
    machine_busy: float
    machine_cpus: int
    seconds: float

    @property
    def outside(self) -> float:
        """Busy cores of the machine not charged to any component (other users' work, the kernel)."""
        return max(self.machine_busy - sum(self.by_component.values()), 0.0)

    def as_json(self) -> dict[str, Any]:
        """Rounded to thousandths of a core, as the bench reports it."""
        return {"cores": {name: round(value, 3) for name, value in self.by_component.items()},
                "outside_stack_cores": round(self.outside, 3), "machine_busy_cores": round(self.machine_busy, 3),
                "machine_cpus": self.machine_cpus, "seconds": round(self.seconds, 2)}


def cpu_use(before: CpuSnapshot, after: CpuSnapshot, cpus: int | None = None) -> CpuUse:
    """What each component (and the machine) used between two snapshots of the same roots."""
    elapsed = after.at - before.at
    if elapsed <= 0:
        raise ValueError("the second snapshot must be taken after the first")

    def per_s(ticks: int) -> float:
        return max(ticks, 0) / TICKS_PER_S / elapsed

    used = {name: per_s(after.components.get(name, 0) - ticks) for name, ticks in before.components.items()}
    return CpuUse(used, per_s(after.machine - before.machine), cpus or os.cpu_count() or 1, elapsed)


RULE_ENGINE_JVM = "rule-engine-jvm"
LOAD_GENERATOR = "load-generator"


def local_stack_roots(settings: AmctlSettings) -> dict[str, int]:
    """The pid of each running component of the local stack `settings` names (as `amctl status` finds them),
    the rule engine's JVM on its own, and this process as the load generator."""
    from amctl.local.stack import LocalStack  # the stack's module is heavy: only when a stack is measured

    roots = {row.name: row.pid for row in LocalStack(settings).status().components if row.pid is not None}
    if "rule-engine" in roots:
        for i, jvm in enumerate(children_named(read_processes(), roots["rule-engine"], "java")):
            roots[RULE_ENGINE_JVM if i == 0 else f"{RULE_ENGINE_JVM}-{i + 1}"] = jvm  # one, the mini-cluster
    return roots | {LOAD_GENERATOR: os.getpid()}
