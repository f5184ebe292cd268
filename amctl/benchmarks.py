"""`amctl bench`: every benchmark of the platform in one run on a fresh local stack.

Each measurement runs in its own Python process (`python -c` calling a `measure_*` function that
returns a dict), so amctl stays a client of the platform and a crash in one benchmark is reported
as that benchmark's failure, not the whole run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amctl.local import processes
from amctl.local.stack import LocalStack
from amctl.settings import AmctlSettings, Ports


@dataclass(frozen=True)
class Measurement:
    """One `module.function(**kwargs)` that returns a dict of figures."""

    name: str
    module: str
    function: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 600.0
    needs_stack: bool = True  # False: measured before the stack starts, on an otherwise idle machine


def run_measurement(m: Measurement, env: dict[str, str]) -> dict[str, Any]:
    code = (
        "import json, sys, importlib\n"
        f"fn = getattr(importlib.import_module({m.module!r}), {m.function!r})\n"
        "print('\\n' + json.dumps(fn(**json.loads(sys.argv[1]))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, json.dumps(m.kwargs)], env=env, capture_output=True,
                            text=True, timeout=m.timeout_s, check=False)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"{m.module}.{m.function} failed: {tail}"}
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def isolated_settings(state_dir: Path) -> AmctlSettings:
    """Settings for a throwaway stack on free ports, so a running demo is left alone."""
    ports = Ports(**{name: processes.free_port() for name in Ports.model_fields})
    return AmctlSettings(state_dir=state_dir, ports=ports)


# The bench stack's services: every load generator connection comes from one address, which the
# Ingestion API's per-client rate limit (2,000 events/s by default) would otherwise measure instead.
BENCH_SERVICE_ENV = {"AM_RATE_LIMIT_PER_S": "10000000", "AM_RATE_LIMIT_BURST": "10000000"}


def _measure(m: Measurement, env: dict[str, str], progress: Callable[[str], None]) -> dict[str, Any]:
    progress(f"measuring {m.name}")
    try:
        return run_measurement(m, env)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {m.timeout_s:g} s"}


def run_bench(measurements: Callable[[AmctlSettings], list[Measurement]],
              progress: Callable[[str], None]) -> dict[str, Any]:
    """Run the measurements that need no stack, then start a fresh stack, time its cold start, run
    every other measurement against it, and stop it."""
    os.environ.update(BENCH_SERVICE_ENV)  # this process starts the bench stack; its services inherit these
    with tempfile.TemporaryDirectory(prefix="amctl-bench-") as tmp:
        Path(tmp).chmod(0o755)
        settings = isolated_settings(Path(tmp) / "state")
        stack = LocalStack(settings)
        report: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
        plan = measurements(settings)
        for m in (m for m in plan if not m.needs_stack):
            report[m.name] = _measure(m, dict(os.environ), progress)
        progress("cold start of the local stack")
        started = time.perf_counter()
        try:
            stack.up(lambda name, state: progress(f"cold start: {name} {state}"))
            report["cold_start_s"] = round(time.perf_counter() - started, 2)
            rows = stack.status()
            report["stack_memory_mib"] = {r.name: round(r.rss_bytes / 2**20, 1) for r in rows}
            report["stack_memory_mib"]["total"] = round(sum(r.rss_bytes for r in rows) / 2**20, 1)
            env = {**stack.service_env(), "AMCTL_STATE_DIR": str(settings.state_dir),
                   **{f"AMCTL_PORT_{k.upper()}": str(v) for k, v in settings.ports.model_dump().items()}}
            for m in (m for m in plan if m.needs_stack):
                report[m.name] = _measure(m, env, progress)
        finally:
            progress("stopping the benchmark stack")
            stack.down(lambda name, state: None, purge=True)
    return report
