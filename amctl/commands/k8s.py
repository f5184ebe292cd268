"""The Kubernetes target's own commands: `amctl render`, `budget` and `images build`.

`up`, `down`, `status` and `smoke` with --target k8s are the stack commands, on `amctl.k8s.target`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from amctl.console import add_row, plain
from amctl.context import get_context
from amctl.errors import AmctlError
from amctl.k8s import budget as budgets
from amctl.k8s import images
from amctl.k8s.profile import DEFAULT_PROFILE
from amctl.k8s.render import load, to_yaml, write
from amctl.options import JsonOption, ProfileOption, TargetOption
from amctl.settings import Target

K8S_ONLY = "use --target k8s"


def render_command(
    ctx: typer.Context,
    target: TargetOption = None,
    profile: ProfileOption = DEFAULT_PROFILE,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write one YAML file per template into this directory (default: stdout).")] = None,
) -> None:
    """Render the Kubernetes manifests of a profile (no Secret values: `up` generates those)."""
    app = get_context(ctx)
    _require_k8s(target)
    loaded, manifests = load(profile)
    if output is None:
        typer.echo(to_yaml(manifests), nl=False)
        return
    files = write(loaded, output)
    app.err.print(f"wrote {len(manifests)} objects in {len(files)} files to {output}", markup=False)


def _require_k8s(target: Target | None) -> None:
    """These commands are about the k8s target: a --target naming another one is refused."""
    if target is not None and target is not Target.K8S:
        raise AmctlError(f"this command is for the k8s target, not {target}", hint=K8S_ONLY)


def budget_command(ctx: typer.Context, target: TargetOption = None, profile: ProfileOption = DEFAULT_PROFILE,
                   json_output: JsonOption = False) -> None:
    """Memory requests and limits per component against the nodes; heaps and namespaces against their containers."""
    app = get_context(ctx)
    _require_k8s(target)
    loaded, manifests = load(profile)
    result = budgets.compute(loaded, manifests)
    mib = budgets.fmt_mib
    if json_output:
        app.print_json(result.as_json())
    else:
        table = Table(title=plain(f"memory budget (MiB) — {loaded.name}: {loaded.node.count} node(s) x "
                                  f"{loaded.node.memory}"))
        for column in ("component", "kind", "replicas", "request", "limit", "total request", "total limit"):
            table.add_column(column, justify="left" if column in ("component", "kind") else "right")
        for c in sorted(result.containers, key=lambda c: (c.one_off, -c.total_limit)):
            add_row(table, c.container + (" (one-off)" if c.one_off else ""), c.workload.split("/")[0], c.replicas,
                    *(f"{v / budgets.MiB:,.0f}" for v in (c.request, c.limit, c.total_request, c.total_limit)),
                    style="dim" if c.one_off else "")
        table.add_section()
        add_row(table, "all long-running", "", "", "", "",
                *(f"{sum(v) / budgets.MiB:,.0f}" for v in ([c.total_request for c in result.steady],
                                                          [c.total_limit for c in result.steady])),
                style="bold")
        app.console.print(table)
        checks = Table(title="checks")
        for column in ("check", "where", "used", "available", ""):
            checks.add_column(column)
        for check in result.checks:
            mark = Text("ok", style="green") if check.ok else Text(f"over by {mib(check.used - check.available)}",
                                                                   style="red")
            add_row(checks, check.name, check.where, mib(check.used), mib(check.available), mark)
        app.console.print(checks)
    if not result.ok:
        raise AmctlError(f"profile {loaded.name} is over budget", details=result.problems,
                         hint=f"lower the limits in templates/k8s/profiles/{loaded.name}.yaml or give the node(s) "
                              "more memory")
    if not json_output:
        steady = sum(c.total_limit for c in result.steady)
        app.console.print(Text.assemble(("within budget", "bold green"),
                                        f": {mib(steady)} of limits on {loaded.node.count} x {loaded.node.memory}"))


images_app = typer.Typer(help="Our container images (service and Flink).", no_args_is_help=True)


@images_app.command("build")
def images_build(ctx: typer.Context, profile: ProfileOption = DEFAULT_PROFILE) -> None:
    """Build the service and Flink images into the cluster's image store (nerdctl -n k8s.io, or docker)."""
    app = get_context(ctx)
    loaded, _ = load(profile)
    builder = images.find_builder()
    for image in images.images(loaded):
        app.err.print(f"building {image.tag} with {' '.join(builder)} ({image.dockerfile.name})", markup=False)
        code = images.build(builder, image, lambda line: app.err.print(f"  {line}", markup=False, highlight=False))
        if code != 0:
            raise AmctlError(f"building {image.tag} failed (exit code {code})",
                             hint="the builder's output above says why")
        app.console.print(Text.assemble(("✓", "green"), f" built {image.tag}"))


def register(app: typer.Typer) -> None:
    app.command("render")(render_command)
    app.command("budget")(budget_command)
    app.add_typer(images_app, name="images")
