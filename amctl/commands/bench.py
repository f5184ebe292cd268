"""`amctl bench`: every benchmark in one run on a fresh local stack; a table, or --json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from amctl.benchmarks import Measurement, machine, run_bench
from amctl.console import add_row
from amctl.context import AppContext, get_context
from amctl.errors import AmctlError, UsageError
from amctl.load import soak
from amctl.local.stack import LocalStack
from amctl.options import JsonOption
from amctl.settings import Target


def measurements(quick: bool) -> list[Measurement]:
    seconds = 3.0 if quick else 10.0
    return [  # the rule job's latency last: its backlog at high rates would slow everything after it
        Measurement("load_generator", "amctl.load.measures:measure_generator_accuracy",
                    {"rates": [400, 1000, 2000, 5000], "seconds": seconds / 2}, needs_stack=False),
        Measurement("rule_evaluations", "server.domain.bench:measure_rule_evaluations",
                    {"seconds": 1.0 if quick else 3.0}, needs_stack=False),
        Measurement("state_size", "flinkjob.bench:measure_state_size", {}, needs_stack=False),
        Measurement("seed_flow", "amctl.load.measures:measure_seed_flow", {"trials": 3 if quick else 10}),
        Measurement("rule_propagation", "amctl.load.measures:measure_rule_propagation", {"trials": 2 if quick else 5}),
        Measurement("destination_latency", "amctl.load.destination_measure:measure_destination_latency",
                    {"users": 100}),
        Measurement("user_segments_api", "amctl.load.measures:measure_user_segments_latency",
                    {"rate": 500, "seconds": seconds}),
        Measurement("ingestion", "amctl.load.measures:measure_ingestion", {"seconds": seconds / 2}),
        Measurement("member_export", "amctl.load.export_measure:measure_member_export",
                    {"members": 20_000 if quick else 100_000}),
        # after the read, ingestion and export stages, so they run in the same context as before it existed
        Measurement("identify_latency", "amctl.load.identity_measure:measure_identify_latency",
                    {"visitors": 40 if quick else 200}),
        Measurement("job_throughput", "flinkjob.bench:measure_job_throughput", {"events": 20_000 if quick else 60_000},
                    timeout_s=1200.0),  # three rounds of each job, taking turns
        # the end-to-end ladder: single events up to 2,000 ev/s, batches of 100 above; --quick climbs fewer rungs
        Measurement("assignment_latency", "amctl.load.measures:measure_assignment_latency",
                    {"seconds": seconds, "rates": [500, 2000, 3000, 5000, 10_000] if quick
                     else [500, 1000, 2000, 3000, 5000, 8000, 10_000]}, timeout_s=900.0),
        # last, so every figure before it runs in the same context as before it existed; it needs no rule job
        Measurement("email", "amctl.load.email_measure:measure_email_throughput", {"recipients": 1000}),
        # after email: its 100,000 seeded profiles must not change the context of any stage before it
        Measurement("backfill", "amctl.load.backfill_measure:measure_backfill", {"profiles": 100_000}),
        # last: a million events on the broker would slow every stage after it
        Measurement("state_backends", "flinkjob.state_bench:measure_state_backends",
                    {"users": [20_000] if quick else [100_000, 1_000_000]}, timeout_s=3600.0),
    ]


def selected(plan: list[Measurement], only: list[str]) -> list[Measurement]:
    """The stages named in `only` (all of them when it is empty), in the plan's order."""
    names = {m.name for m in plan}
    unknown = [name for name in only if name not in names]
    if unknown:
        raise typer.BadParameter(f"no stage {', '.join(map(repr, unknown))}; the stages are {', '.join(sorted(names))}",
                                 param_hint="--only")
    return [m for m in plan if not only or m.name in only]


def _rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("cold start (amctl up)", f"{report.get('cold_start_s')} s"),
            ("stack memory (RSS)", f"{report.get('stack_memory_mib', {}).get('total')} MiB")]
    for name, figures in report.items():
        if isinstance(figures, dict) and name not in ("machine", "stack_memory_mib"):
            for key, value in figures.items():
                rows.append((f"{name}.{key}", json.dumps(value) if isinstance(value, dict | list) else str(value)))
    return rows


def bench(
    ctx: typer.Context,
    quick: Annotated[bool, typer.Option("--quick", help="Shorter runs (for a smoke check of the bench).")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the JSON report here.")] = None,
    only: Annotated[list[str] | None, typer.Option(
        "--only", help="Run just this stage (repeatable), e.g. --only job_throughput; the stack still starts for "
                       "stages that need it.")] = None,
    soak_for: Annotated[str | None, typer.Option(
        "--soak", metavar="DURATION", help="Instead of the stages: a steady load for this long (90s, 10m, 1h) "
                                           "against the running local stack, read every --every.")] = None,
    rate: Annotated[float, typer.Option("--rate", help="--soak: events per second, one per request.")]
    = soak.DEFAULT_RATE,
    users: Annotated[int, typer.Option("--users", help="--soak: users the events are spread over.")]
    = soak.DEFAULT_USERS,
    every: Annotated[str, typer.Option("--every", metavar="DURATION", help="--soak: how often to take a sample.")]
    = "1m",
    json_output: JsonOption = False,
) -> None:
    """Cold start, memory, rule evaluations/s, ingestion events/s (vs bare FastAPI and a raw producer),
    the end-to-end ladder (500 → 10,000 ev/s: p50/p99 and the cores each component used), rule propagation,
    API p50/p99, event → signed webhook delivered p50/p99, identify → merged profile p50/p99, the rule job's
    state bytes per user, campaign mails/s with kept SMTP connections and with one per mail, and live latency
    while a segment over 100,000 profiles backfills. With --soak: a long steady load against the running
    stack instead, sampling RSS per component, the broker's size and p50/p99 every --every, then checking
    that no acknowledged event was lost."""
    app = get_context(ctx)
    if soak_for is not None:
        if quick or only:
            raise UsageError("--soak runs on its own", hint="leave out --quick and --only")
        config = soak.SoakConfig(soak.parse_option_duration(soak_for, "--soak"), rate, users,
                                 soak.parse_option_duration(every, "--every"))
        run_soak(app, config, output, json_output)
        return
    plan = selected(measurements(quick), only or [])
    with app.err.status("benchmarking") as status:
        report = run_bench(plan, lambda text: status.update(escape(text))).as_json()
    if output is not None:
        output.write_text(json.dumps(report, indent=2))
    if json_output:
        app.print_json(report)
        return
    table = Table(title="amctl bench")
    table.add_column("figure")
    table.add_column("value", overflow="fold")
    for row in _rows(report):
        add_row(table, *row)
    app.console.print(table)


def run_soak(app: AppContext, config: soak.SoakConfig, output: Path | None, json_output: bool) -> None:
    """The soak against the running local stack: live samples on stderr, the tables (or JSON) at the end."""
    from amctl.load.soak_measure import SoakRun  # the load generator's modules, only when a soak runs
    from amctl.load.soak_view import LiveSoak, final_view

    app.require(Target.LOCAL, "amctl bench --soak runs against the local stack")
    if not any(row.state == "running" for row in LocalStack(app.settings).status().components):
        raise AmctlError("nothing is running", hint="start the platform with: amctl up")
    run = SoakRun(app.settings, config)
    view = LiveSoak(run)

    def progress(text: str) -> None:
        view.status = text

    def on_sample(figures: dict[str, Any], _load: object) -> None:
        view.samples.append(figures)

    with Live(view, console=app.err, refresh_per_second=2, transient=True):
        figures = run.run(progress, on_sample)
    report = {"machine": machine(), "soak": figures}
    if output is not None:
        output.write_text(json.dumps(report, indent=2))
    if json_output:
        app.print_json(report)
    else:
        app.console.print(final_view(figures))


def register(app: typer.Typer) -> None:
    app.command()(bench)
