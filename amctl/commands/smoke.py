"""`amctl smoke`: is every component healthy, and does the basic scenario pass? (for CI and after `up`)"""

from __future__ import annotations

import time

import typer
from rich.text import Text

from amctl.context import get_context
from amctl.errors import AmctlError
from amctl.k8s.target import K8sOptions
from amctl.options import ContextOption, JsonOption, KubeconfigOption, ProfileOption, TargetOption
from amctl.platforms import open_platform
from amctl.scenario.model import DEFAULT_DIR, resolve
from amctl.scenario.printer import ScenarioPrinter
from amctl.scenario.runner import run_files

SMOKE_SCENARIO = "basic-segmentation"


def smoke(ctx: typer.Context, target: TargetOption = None, profile: ProfileOption = K8sOptions.profile,
          context: ContextOption = K8sOptions.context, kubeconfig: KubeconfigOption = None,
          json_output: JsonOption = False) -> None:
    """Health of every component, then the basic-segmentation scenario; exits non-zero on any failure.

    On k8s it authenticates with AMCTL_API_KEY, else with the admin key of the deployment's Secret.
    """
    app = get_context(ctx, target)
    started = time.perf_counter()
    platform = open_platform(app.settings, K8sOptions(profile, context, kubeconfig))
    status = platform.status()
    lines = app.err if json_output else app.console  # with --json, stdout holds the JSON alone
    for row in status.components:
        mark = ("✓", "green") if row.state == "running" else ("✗", "red")
        lines.print(Text.assemble(mark, f" {row.name:<18} {row.state}"))
    report = {"passed": False, "components": status.as_json(), "scenario": None}
    down = status.not_running()
    if not down:
        scenario = run_files(platform.client_settings(), [resolve(SMOKE_SCENARIO, DEFAULT_DIR)],
                             ScenarioPrinter(lines))[0]
        report.update(passed=scenario.passed, scenario={"name": scenario.name, "passed": scenario.passed,
                                                        "steps": [s.__dict__ for s in scenario.steps]})
    report["seconds"] = round(time.perf_counter() - started, 1)
    if json_output:
        app.print_json(report)
    if down:
        raise AmctlError(f"not healthy: {', '.join(down)}", hint="see amctl status and amctl logs COMPONENT")
    if not report["passed"]:
        raise AmctlError("the basic scenario failed (see the step above)")
    if not json_output:
        app.console.print(f"smoke passed in {report['seconds']:.1f} s", style="bold green")


def register(app: typer.Typer) -> None:
    app.command()(smoke)
