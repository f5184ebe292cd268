"""`amctl scenario list|run`: the demo scenarios in `scenarios/*.yaml`, with a live report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from amctl.console import add_row, plain
from amctl.context import get_context
from amctl.errors import UsageError
from amctl.options import JsonOption
from amctl.scenario.junit import write_junit
from amctl.scenario.model import DEFAULT_DIR, find_scenarios, load_scenario, resolve
from amctl.scenario.printer import ScenarioPrinter
from amctl.scenario.runner import run_files

app = typer.Typer(help="Run the demo scenarios (scenarios/*.yaml) against the running platform.",
                  no_args_is_help=True)

DirOption = Annotated[Path, typer.Option("--dir", envvar="AMCTL_SCENARIO_DIR",
                                         help="Where scenario files live (env: AMCTL_SCENARIO_DIR).")]


@app.command("list")
def list_scenarios(ctx: typer.Context, directory: DirOption = DEFAULT_DIR, json_output: JsonOption = False) -> None:
    """The scenarios that can be run, with their descriptions."""
    app_ctx = get_context(ctx)
    scenarios = [load_scenario(p) for p in find_scenarios(directory)]
    if json_output:
        app_ctx.print_json([{"name": s.name, "file": str(s.path), "steps": len(s.steps),
                             "description": s.description} for s in scenarios])
        return
    table = Table(title=plain(f"scenarios in {directory}"))
    for column in ("name", "steps", "description"):
        table.add_column(column)
    for s in scenarios:
        add_row(table, s.name, len(s.steps), s.description)
    app_ctx.console.print(table)


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
    paths = find_scenarios(directory) if all_scenarios else [resolve(n, directory) for n in names or []]
    if not paths:
        raise UsageError("no scenario given", hint="name one (amctl scenario list) or pass --all")
    # with --json, stdout holds the JSON alone: the steps go to stderr as they end
    results = run_files(app_ctx.settings, paths, ScenarioPrinter(app_ctx.err if json_output else app_ctx.console))
    if junit is not None:
        write_junit(results, junit)
        app_ctx.err.print(f"JUnit XML written to {junit}", markup=False)
    if json_output:
        app_ctx.print_json([{"name": r.name, "passed": r.passed, "seconds": round(r.seconds, 3),
                             "steps": [s.__dict__ for s in r.steps]} for r in results])
    passed = sum(r.passed for r in results)
    (app_ctx.err if json_output else app_ctx.console).print(f"{passed} passed, {len(results) - passed} failed")
    if passed != len(results):
        raise typer.Exit(1)
