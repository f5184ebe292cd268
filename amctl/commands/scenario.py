"""`amctl scenario list|run`: the demo scenarios in `scenarios/*.yaml`, with a live report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from amctl.context import AppContext, get_context
from amctl.options import JsonOption
from amctl.scenario.http import ServiceHttp
from amctl.scenario.junit import write_junit
from amctl.scenario.model import (
    ScenarioError,
    ScenarioResult,
    StepResult,
    find_scenarios,
    load_scenario,
    resolve,
)
from amctl.scenario.runner import ScenarioRunner

app = typer.Typer(help="Run the demo scenarios (scenarios/*.yaml) against the running platform.",
                  no_args_is_help=True)

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "scenarios"
DirOption = Annotated[Path, typer.Option("--dir", envvar="AMCTL_SCENARIO_DIR",
                                         help="Where scenario files live (env: AMCTL_SCENARIO_DIR).")]


@app.command("list")
def list_scenarios(ctx: typer.Context, directory: DirOption = DEFAULT_DIR, json_output: JsonOption = False) -> None:
    """The scenarios that can be run, with their descriptions."""
    app_ctx = get_context(ctx)
    try:
        scenarios = [load_scenario(p) for p in find_scenarios(directory)]
    except ScenarioError as exc:
        app_ctx.fail(str(exc))
    if json_output:
        app_ctx.print_json([{"name": s.name, "file": str(s.path), "steps": len(s.steps),
                             "description": s.description} for s in scenarios])
        return
    table = Table(title=f"scenarios in {directory}")
    for column in ("name", "steps", "description"):
        table.add_column(column)
    for s in scenarios:
        table.add_row(s.name, str(len(s.steps)), s.description)
    app_ctx.console.print(table)


def run_scenarios(app_ctx: AppContext, paths: list[Path]) -> list[ScenarioResult]:
    """Run each scenario file, printing each step as it ends; used by `scenario run` and `smoke`."""
    http = ServiceHttp(app_ctx.settings)
    results = []
    try:
        for path in paths:
            scenario = load_scenario(path)
            app_ctx.console.print(f"[bold]▶ {scenario.name}[/] — {scenario.description}")

            def on_step(step: StepResult) -> None:
                if step.error is None:
                    app_ctx.console.print(f"  [green]✓[/] {step.name} [dim]({step.seconds:.2f} s) {step.detail}[/]")
                else:
                    app_ctx.console.print(f"  [red]✗ {step.name}[/] ({step.seconds:.2f} s)")
                    app_ctx.console.print(f"    {step.error}", markup=False)

            result = ScenarioRunner(http, on_step=on_step).run(scenario)
            skipped = sum(1 for s in result.steps if s.skipped)
            if skipped:
                app_ctx.console.print(f"  [yellow]{skipped} step(s) not run after the failure[/]")
            results.append(result)
    finally:
        http.close()
    return results


@app.command("run")
def run(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Scenario names or YAML files.")] = None,
    all_scenarios: Annotated[bool, typer.Option("--all", help="Run every scenario in the directory.")] = False,
    junit: Annotated[Path | None, typer.Option("--junit", help="Write JUnit XML here (for CI).")] = None,
    directory: DirOption = DEFAULT_DIR,
    json_output: JsonOption = False,
) -> None:
    """Run scenarios step by step; exits 1 if any step fails."""
    app_ctx = get_context(ctx)
    try:
        paths = find_scenarios(directory) if all_scenarios else [resolve(n, directory) for n in names or []]
    except ScenarioError as exc:
        app_ctx.fail(str(exc))
    if not paths:
        app_ctx.fail("no scenario given", hint="name one (amctl scenario list) or pass --all")
    try:
        results = run_scenarios(app_ctx, paths)
    except ScenarioError as exc:
        app_ctx.fail(str(exc))
    if junit is not None:
        write_junit(results, junit)
        app_ctx.err.print(f"JUnit XML written to {junit}")
    if json_output:
        app_ctx.print_json([{"name": r.name, "passed": r.passed, "seconds": round(r.seconds, 3),
                             "steps": [s.__dict__ for s in r.steps]} for r in results])
    passed = sum(r.passed for r in results)
    app_ctx.console.print(f"{passed} passed, {len(results) - passed} failed")
    if passed != len(results):
        raise typer.Exit(1)
