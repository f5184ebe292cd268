"""`amctl up`, `down`, `status`, `logs`: run the platform on its target (local processes, or k8s)."""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Annotated

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from amctl.console import add_row, plain
from amctl.context import get_context
from amctl.errors import AmctlError
from amctl.k8s.target import K8sOptions
from amctl.local import processes
from amctl.options import (
    ContextOption,
    DurableBrokerOption,
    FlinkOption,
    JsonOption,
    KubeconfigOption,
    MonitoringOption,
    ProfileOption,
    TargetOption,
    TimeoutOption,
)
from amctl.platforms import local_stack, open_platform
from amctl.settings import Target
from amctl.target import Kind, Pending, StatusReport, Update, UpResult

# how a settled update is marked on its line, per command
UP_MARKS = {Kind.DONE: Text("✓", style="green"), Kind.STOPPED: Text("-"), Kind.NOTE: Text(" ")}
DOWN_MARKS: dict[Kind, Text] = {}


def pending_view(title: str, waiting: tuple[Pending, ...]) -> Group:
    """What a phase still waits for, and why (with the last log lines of what crashes)."""
    table = Table(title=plain(title), title_justify="left")
    for column in ("still pending", "why", "detail"):
        table.add_column(column, overflow="fold")
    logs: list[Text] = []
    for item in waiting:
        style = "red" if item.reason in ("CrashLoopBackOff", "ImagePullBackOff") or item.failed else "yellow"
        add_row(table, item.workload, Text(item.reason, style=style), item.detail)
        if item.log_tail:
            logs.append(Text(f"last log lines of {item.workload}:", style="bold"))
            logs.extend(Text(f"  {line}", style="dim") for line in item.log_tail)
    return Group(table, *logs)


class ProgressView:
    """A platform's updates on stderr: settled ones as lines that stay, the current one live (a spinner
    line, or the table of what a phase still waits for), what never got ready kept before the error."""

    def __init__(self, console: Console, activity: str, marks: dict[Kind, Text]) -> None:
        self.console = console
        self.marks = marks
        self.live = Live(Spinner("dots", activity), console=console, refresh_per_second=8, transient=True)

    def __enter__(self) -> ProgressView:
        self.live.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.live.stop()

    def update(self, update: Update) -> None:
        title = f"{update.name}: {update.state}"
        if update.kind is Kind.WORKING:
            self.live.update(pending_view(title, update.pending) if update.pending else Spinner("dots", plain(title)))
        elif update.kind is Kind.STUCK:
            self.console.print(pending_view(title, update.pending))
        else:
            mark = self.marks.get(update.kind)
            line = Text("  ") + (mark + " " if mark is not None else Text()) + f"{update.name:<18} {update.state}"
            self.console.print(line, highlight=False)


def _mib(value: int) -> str:
    return f"{value / 2**20:,.0f} MiB" if value else "-"


def show_up(console: Console, result: UpResult) -> None:
    verb = f"ready in {result.seconds:.1f} s" if result.started else "already running; nothing to start"
    where = f" in {result.where}" if result.where else ""
    console.print(f"Audience Manager ({result.platform}) {verb}{where}", style="bold green", markup=False)
    width = max((len(e.name) for e in result.endpoints), default=0) + 1
    for endpoint in result.endpoints:
        console.print(f"  {endpoint.name:<{width}} {endpoint.address}", markup=False, highlight=False)
    for note in result.notes:
        console.print(f"  {note}", markup=False, highlight=False)
    for line in result.next_steps:
        console.print(line, markup=False, highlight=False)


def up(ctx: typer.Context, target: TargetOption = None, profile: ProfileOption = K8sOptions.profile,
       context: ContextOption = K8sOptions.context, kubeconfig: KubeconfigOption = None,
       timeout: TimeoutOption = K8sOptions.timeout_s, monitoring: MonitoringOption = None,
       durable_broker: DurableBrokerOption = None, flink: FlinkOption = None, json_output: JsonOption = False) -> None:
    """Start the platform; components already running are left as they are (k8s: --profile, --context)."""
    app = get_context(ctx, target)
    platform = open_platform(app.settings, K8sOptions(profile, context, kubeconfig, timeout),
                             durable_broker=durable_broker, monitoring=monitoring, flink=flink)
    with ProgressView(app.err, f"starting Audience Manager ({app.target})", UP_MARKS) as view:
        result = platform.up(view.update)
    if json_output:
        app.print_json(result.as_json())
    else:
        show_up(app.console, result)


def down(
    ctx: typer.Context,
    target: TargetOption = None,
    purge: Annotated[bool, typer.Option("--purge", help="Also delete all data (PostgreSQL, logs, state).")] = False,
    profile: ProfileOption = K8sOptions.profile,
    context: ContextOption = K8sOptions.context,
    kubeconfig: KubeconfigOption = None,
    timeout: TimeoutOption = K8sOptions.timeout_s,
    json_output: JsonOption = False,
) -> None:
    """Stop every component in reverse order; data survives unless --purge (k8s: deletes the namespace)."""
    app = get_context(ctx, target)
    platform = open_platform(app.settings, K8sOptions(profile, context, kubeconfig, timeout))
    with ProgressView(app.err, f"stopping Audience Manager ({app.target})", DOWN_MARKS) as view:
        result = platform.down(view.update, purge=purge)
    if json_output:
        app.print_json(result.as_json())
    else:
        app.console.print(result.summary, markup=False, highlight=False)


def show_status(console: Console, report: StatusReport) -> None:
    table = Table(title=plain(report.title))
    measured = ("pid", "port", "memory (RSS)", "uptime") if report.processes else ()
    for column in (report.noun, "state", *measured, "detail"):
        table.add_column(column, overflow="fold")
    for row in report.components:
        state = Text(row.state, style={"running": "green", "stopped": "dim"}.get(row.state, "yellow"))
        figures = (row.pid or "-", row.port or "-", _mib(row.rss_bytes),
                   f"{row.uptime_s:.0f} s" if row.uptime_s is not None else "-") if report.processes else ()
        add_row(table, row.name, state, *figures, row.detail)
    console.print(table)
    if report.processes:
        console.print(f"total memory: {_mib(sum(r.rss_bytes for r in report.components))}")


def status(ctx: typer.Context, target: TargetOption = None, json_output: JsonOption = False,
           profile: ProfileOption = K8sOptions.profile, context: ContextOption = K8sOptions.context,
           kubeconfig: KubeconfigOption = None) -> None:
    """Each component's state, pid, port, health and memory (k8s: each workload's readiness)."""
    app = get_context(ctx, target)
    report = open_platform(app.settings, K8sOptions(profile, context, kubeconfig)).status()
    if json_output:
        app.print_json(report.as_json())
    else:
        show_status(app.console, report)
    if report.failing():
        raise typer.Exit(1)


def logs(
    ctx: typer.Context,
    component: Annotated[str, typer.Argument(help="Component name, as `amctl status` lists it.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many of the last lines to show.")] = 50,
) -> None:
    """Print a component's log (and follow it)."""
    app = get_context(ctx)
    app.require(Target.LOCAL, f"this command runs on the local target only, not {app.target}",
                hint="use --target local (on k8s: kubectl -n audience-manager-demo logs deploy/NAME)")
    stack = local_stack(app.settings)
    stack.component(component)  # an unknown name fails here, listing the known ones
    path = stack.log_path(component)
    if not path.exists():
        raise AmctlError(f"no log yet for {component}", hint="start the stack with: amctl up")
    for line in processes.tail(path, lines):
        typer.echo(line)
    if follow:
        _follow(path)


def _follow(path: Path) -> None:
    """Print lines as they are added to `path`, until Ctrl-C."""
    with path.open("rb") as fh:
        fh.seek(0, 2)
        try:
            while True:
                chunk = fh.readline()
                if chunk:
                    typer.echo(chunk.decode(errors="replace").rstrip("\n"))
                else:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            pass


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
    app.command()(status)
    app.command()(logs)
