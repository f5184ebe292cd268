"""Where the platform runs, behind one small interface.

`amctl up`, `down`, `status` and `smoke` drive a `Platform` (the local stack, `amctl.local.stack`, or a
Kubernetes deployment, `amctl.k8s.target`; `amctl.platforms.open_platform` picks one from the target)
and render what it returns; they never ask which one it is. Long work reports `Update`s as it goes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Protocol

from amctl.settings import AmctlSettings


class Kind(StrEnum):
    """What an update is, and so how long it stays on screen."""

    WORKING = "working"  # what is being done now; replaced by the next update
    DONE = "done"  # settled: ready, already running, finished
    STOPPED = "stopped"  # settled: stopped
    NOTE = "note"  # a line worth keeping (a slow install, generated secrets)
    STUCK = "stuck"  # what never got ready, said just before the failure


@dataclass(frozen=True)
class Pending:
    """A workload that is not ready yet, and the most telling reason why."""

    workload: str
    reason: str
    detail: str = ""
    log_tail: tuple[str, ...] = ()
    failed: bool = False  # will not get ready by waiting longer (a Job out of retries)


@dataclass(frozen=True)
class Update:
    """One step of long work: about `name` (a component or a phase), what happens to it now."""

    name: str
    state: str
    kind: Kind = Kind.WORKING
    pending: tuple[Pending, ...] = ()  # what a phase still waits for, and why


Progress = Callable[[Update], None]


def quiet(_: Update) -> None:
    """Progress nobody watches."""


@dataclass(frozen=True)
class UpResult:
    """What `up` did and where the platform now answers."""

    platform: str  # "local", or "k8s, <profile>"
    started: tuple[str, ...]  # what this `up` started or rolled out; empty when everything already ran
    seconds: float
    endpoints: tuple[Endpoint, ...]
    where: str = ""  # k8s: the namespace
    notes: tuple[str, ...] = ()  # lines after the endpoints: how to read the generated secrets
    next_steps: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Endpoint:
    """Something a user reaches (a service, a UI, a store) and how: its URL, or the port-forward that
    gets there from this machine."""

    name: str
    address: str


@dataclass(frozen=True)
class DownResult:
    """What `down` stopped or deleted."""

    stopped: tuple[str, ...]  # what was stopped or deleted
    summary: str  # one line saying so

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    state: str  # running | unhealthy | stopped (local processes); running, or why not (k8s workloads)
    pid: int | None = None
    port: int | None = None
    rss_bytes: int = 0
    uptime_s: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class StatusReport:
    title: str
    noun: str  # what a row is: "component" (a local process) or "workload" (k8s)
    components: tuple[ComponentStatus, ...]
    processes: bool  # rows are local processes: pid, port, memory and uptime mean something

    def not_running(self) -> list[str]:
        return [c.name for c in self.components if c.state != "running"]

    def failing(self) -> list[str]:
        """Components that should run and do not (a stopped local component is not failing)."""
        return [c.name for c in self.components if c.state not in ("running", "stopped")]

    def as_json(self) -> list[dict[str, Any]]:
        if self.processes:
            return [asdict(c) for c in self.components]
        return [{self.noun: c.name, "state": c.state, "detail": c.detail} for c in self.components]


class Platform(Protocol):
    """The platform on one target: start it, stop it, say how it is, and how to reach its services."""

    def up(self, progress: Progress) -> UpResult:
        """Start (or roll out) whatever does not run yet; AmctlError when something cannot get ready."""
        ...

    def down(self, progress: Progress, purge: bool = False) -> DownResult:
        """Stop everything; `purge` also deletes the data (k8s always deletes the namespace)."""
        ...

    def status(self) -> StatusReport:
        ...

    def client_settings(self) -> AmctlSettings:
        """The settings amctl's service clients use against this platform (k8s: with an API key)."""
        ...
