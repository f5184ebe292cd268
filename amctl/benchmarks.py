"""`amctl bench`: every benchmark of the platform in one run on a fresh local stack.

Each measurement runs in its own Python process (`python -m amctl.measure MODULE:FUNCTION KWARGS`,
calling a `measure_*` function that returns a dict of figures), so amctl stays a client of the platform
and a crash in one benchmark is reported as that benchmark's failure, not the whole run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amctl.local import processes
from amctl.local.stack import LocalStack
from amctl.settings import AmctlSettings, Ports
from amctl.target import quiet


@dataclass(frozen=True)
class Measurement:
    """One `module:function(**kwargs)` that returns a dict of figures."""

    name: str
    function: str  # "module:function"
    kwargs: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 600.0
    needs_stack: bool = True  # False: measured before the stack starts, on an otherwise idle machine


@dataclass(frozen=True)
class MeasurementResult:
    name: str
    figures: dict[str, Any]  # empty when the measurement failed
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return self.figures if self.error is None else {"error": self.error}


@dataclass
class BenchReport:
    machine: dict[str, Any]
    idle: list[MeasurementResult] = field(default_factory=list)  # measured before the stack started
    cold_start_s: float | None = None
    stack_memory_mib: dict[str, float] = field(default_factory=dict)
    on_stack: list[MeasurementResult] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        report: dict[str, Any] = {"machine": self.machine, **{r.name: r.as_json() for r in self.idle}}
        if self.cold_start_s is not None:
            report |= {"cold_start_s": self.cold_start_s, "stack_memory_mib": self.stack_memory_mib}
        return report | {r.name: r.as_json() for r in self.on_stack}


def run_measurement(m: Measurement, env: dict[str, str]) -> MeasurementResult:
    """Run one measurement in a process of its own; its figures are the last line it prints (JSON)."""
    command = [sys.executable, "-m", "amctl.measure", m.function, json.dumps(m.kwargs)]
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=m.timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return MeasurementResult(m.name, {}, f"did not finish within {m.timeout_s:g} s")
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        return MeasurementResult(m.name, {}, f"{m.function} failed: {tail}")
    return MeasurementResult(m.name, dict(json.loads(result.stdout.strip().splitlines()[-1])))


def machine() -> dict[str, Any]:
    """What a bench report says of the machine it ran on."""
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0]}


def isolated_settings(state_dir: Path) -> AmctlSettings:
    """Settings for a throwaway stack on free ports, so a running demo is left alone."""
    taken: list[int] = []
    for _ in Ports.model_fields:
        taken.append(processes.service_port(taken=taken))
    ports = Ports(**dict(zip(Ports.model_fields, taken, strict=True)))
    return AmctlSettings(state_dir=state_dir, ports=ports)


# The bench stack's services: every load generator connection comes from one address, which the
# Ingestion API's per-client rate limit (2,000 events/s by default) would otherwise measure instead.
BENCH_SERVICE_ENV = {"AM_RATE_LIMIT_PER_S": "10000000", "AM_RATE_LIMIT_BURST": "10000000"}


def run_bench(plan: list[Measurement], progress: Callable[[str], None]) -> BenchReport:
    """Run the measurements that need no stack, then (if any other is planned) start a fresh stack, time its
    cold start, run every other measurement against it, and stop it."""

    def measure(m: Measurement, env: dict[str, str]) -> MeasurementResult:
        progress(f"measuring {m.name}")
        return run_measurement(m, env)

    with tempfile.TemporaryDirectory(prefix="amctl-bench-") as tmp:
        Path(tmp).chmod(0o755)
        settings = isolated_settings(Path(tmp) / "state")
        stack = LocalStack(settings, extra_env=BENCH_SERVICE_ENV)
        report = BenchReport(machine())
        report.idle = [measure(m, dict(os.environ)) for m in plan if not m.needs_stack]
        if not any(m.needs_stack for m in plan):
            return report  # e.g. `--only rule_evaluations`: no stack to start
        progress("cold start of the local stack")
        try:
            started = stack.up(lambda update: progress(f"cold start: {update.name} {update.state}"))
            report.cold_start_s = round(started.seconds, 2)
            rows = stack.status().components
            report.stack_memory_mib = {r.name: round(r.rss_bytes / 2**20, 1) for r in rows}
            report.stack_memory_mib["total"] = round(sum(r.rss_bytes for r in rows) / 2**20, 1)
            env = {**stack.service_env(), "AMCTL_STATE_DIR": str(settings.state_dir),
                   **{f"AMCTL_PORT_{k.upper()}": str(v) for k, v in settings.ports.model_dump().items()}}
            report.on_stack = [measure(m, env) for m in plan if m.needs_stack]
        finally:
            progress("stopping the benchmark stack")
            stack.down(quiet, purge=True)
    return report
