"""`amctl smoke`: is every component healthy, and does the basic scenario pass? (for CI and after `up`)"""

from __future__ import annotations

import time

import typer

from amctl.commands import k8s
from amctl.commands.k8s import ContextOption, K8sOptions, KubeconfigOption, ProfileOption
from amctl.commands.scenario import DEFAULT_DIR, run_scenarios
from amctl.commands.stack import for_target, local_stack
from amctl.options import TargetOption
from amctl.scenario.model import ScenarioError, resolve
from amctl.settings import Target


def smoke(ctx: typer.Context, target: TargetOption = None, profile: ProfileOption = K8sOptions.profile,
          context: ContextOption = K8sOptions.context, kubeconfig: KubeconfigOption = None) -> None:
    """Health of every component, then the basic-segmentation scenario; exits non-zero on any failure.

    On k8s it authenticates with AMCTL_API_KEY, else with the admin key of the deployment's Secret.
    """
    app = for_target(ctx, target)
    started = time.perf_counter()
    options = K8sOptions(profile, context, kubeconfig)
    if app.target is Target.K8S:
        rows = [(name, state) for name, state, _ in k8s.component_states(app, options)]
    else:
        rows = [(row.name, row.state) for row in local_stack(app).status()]
    down = [name for name, state in rows if state != "running"]
    for name, state in rows:
        mark = "[green]✓[/]" if state == "running" else "[red]✗[/]"
        app.console.print(f"{mark} {name:<18} {state}")
    if down:
        app.fail(f"not healthy: {', '.join(down)}", hint="see amctl status and amctl logs COMPONENT")
    if app.target is Target.K8S and app.settings.api_key is None:  # the APIs require a key there
        app.settings = app.settings.model_copy(update={"api_key": k8s.admin_api_key(app, options)})
    try:
        results = run_scenarios(app, [resolve("basic-segmentation", DEFAULT_DIR)])
    except ScenarioError as exc:
        app.fail(str(exc))
    if not all(r.passed for r in results):
        app.fail("the basic scenario failed (see the step above)")
    app.console.print(f"[bold green]smoke passed in {time.perf_counter() - started:.1f} s[/]")


def register(app: typer.Typer) -> None:
    app.command()(smoke)
