"""`amctl up`, `down`, `status`, `logs`: run the platform on the local target (or k8s)."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from amctl.commands import k8s
from amctl.commands.k8s import ContextOption, K8sOptions, KubeconfigOption, ProfileOption, TimeoutOption
from amctl.context import AppContext, get_context
from amctl.local import processes
from amctl.local.options import StackOptions
from amctl.local.stack import LocalStack, StackError
from amctl.options import JsonOption, TargetOption
from amctl.settings import Target

MonitoringOption = Annotated[bool | None, typer.Option(
    "--with-monitoring/--without-monitoring",
    help="Also run Prometheus (Debian's package) with the k8s target's scrape jobs and alert rules; "
         "remembered by later `amctl up` (local target).")]

DurableBrokerOption = Annotated[bool | None, typer.Option(
    "--durable-broker/--memory-broker",
    help="Local: keep the broker's records on disk (an S3 server under the state dir) or in RAM (the default). "
         "Remembered: a later plain `amctl up` keeps the choice.")]


def for_target(ctx: typer.Context, target: Target | None) -> AppContext:
    app = get_context(ctx)
    if target is not None and target is not app.settings.target:
        app.settings = app.settings.model_copy(update={"target": target})
    return app


def local_stack(app: AppContext, monitoring: bool | None = None, durable_broker: bool | None = None) -> LocalStack:
    """The local stack as it was last asked to run, with the options given now applied."""
    if app.target is not Target.LOCAL:
        app.fail(f"this command runs on the local target only, not {app.target}", hint="use --target local "
                 "(on k8s: kubectl -n audience-manager-demo logs deploy/NAME)")
    options = StackOptions.load(app.settings.state_dir).updated(durable_broker=durable_broker, monitoring=monitoring)
    return LocalStack(app.settings, options=options)


def _report_failure(app: AppContext, exc: StackError) -> None:
    if exc.log_tail:
        app.err.rule("last log lines", style="red")
        for line in exc.log_tail:
            app.err.print(line, markup=False, highlight=False)
        app.err.rule(style="red")
    app.fail(str(exc), hint=exc.hint or None)


def _mib(value: int) -> str:
    return f"{value / 2**20:,.0f} MiB" if value else "-"


def up(ctx: typer.Context, target: TargetOption = None, profile: ProfileOption = K8sOptions.profile,
       context: ContextOption = K8sOptions.context, kubeconfig: KubeconfigOption = None,
       timeout: TimeoutOption = K8sOptions.timeout_s, monitoring: MonitoringOption = None,
       durable_broker: DurableBrokerOption = None) -> None:
    """Start the platform; components already running are left as they are (k8s: --profile, --context)."""
    app = for_target(ctx, target)
    if app.target is Target.K8S:
        if durable_broker is not None:
            app.fail("--durable-broker/--memory-broker choose the local broker's storage", hint="on k8s the "
                     "brokers are Apache Kafka with persistent storage: leave the flag out")
        if monitoring is not None:
            app.fail("--with-monitoring/--without-monitoring choose the local Prometheus",
                     hint="on k8s Prometheus, Grafana and Kafka UI always run: leave the flag out")
        k8s.up(app, K8sOptions(profile, context, kubeconfig, timeout))
        return
    stack = local_stack(app, monitoring=monitoring, durable_broker=durable_broker)
    started_at = time.perf_counter()
    with app.err.status("starting the local stack") as spinner:

        def progress(name: str, state: str) -> None:
            spinner.update(f"{name}: {state}")
            if state.startswith(("healthy", "already running", "done")):
                app.err.print(f"  [green]✓[/] {name:<18} {state}")
            elif state.startswith("stopped"):
                app.err.print(f"  - {name:<18} {state}")
            elif state.startswith("installing"):  # once per machine, and slow: say so even where no spinner shows
                app.err.print(f"    {name:<18} {state}")

        try:
            started = stack.up(progress)
        except StackError as exc:
            spinner.stop()
            _report_failure(app, exc)
    elapsed = time.perf_counter() - started_at
    s = app.settings
    verb = f"ready in {elapsed:.1f} s" if started else "already running; nothing to start"
    app.console.print(f"[bold green]Audience Manager (local) {verb}[/]")
    app.console.print(f"  Segment API        {s.url(s.ports.segment_api)}/docs")
    app.console.print(f"  Ingestion API      {s.url(s.ports.ingestion_api)}/docs")
    app.console.print(f"  Communication API  {s.url(s.ports.communication_api)}/docs")
    app.console.print(f"  PostgreSQL         postgresql://postgres@{s.host}:{s.ports.postgres}/audience")
    app.console.print(f"  Kafka              {s.host}:{s.ports.kafka}"
                      + (f" (durable: records in {stack.s3.objects_dir})" if stack.broker.durable else ""))
    if stack.options.monitoring:
        app.console.print(f"  Prometheus         {s.url(s.ports.prometheus)}/targets")
    app.console.print("Try:", style="bold")
    app.console.print(f"  curl -s {s.url(s.ports.segment_api)}/actuator/health", markup=False)
    app.console.print("Stop with: amctl down")


def down(
    ctx: typer.Context,
    target: TargetOption = None,
    purge: Annotated[bool, typer.Option("--purge", help="Also delete all data (PostgreSQL, logs, state).")] = False,
    profile: ProfileOption = K8sOptions.profile,
    context: ContextOption = K8sOptions.context,
    kubeconfig: KubeconfigOption = None,
    timeout: TimeoutOption = K8sOptions.timeout_s,
) -> None:
    """Stop every component in reverse order; data survives unless --purge (k8s: deletes the namespace)."""
    app = for_target(ctx, target)
    if app.target is Target.K8S:
        k8s.down(app, K8sOptions(profile, context, kubeconfig, timeout))
        return
    stack = local_stack(app)
    stopped = stack.down(lambda name, state: app.err.print(f"  {name:<18} {state}"), purge=purge)
    app.console.print(f"stopped {len(stopped)} component(s)" if stopped else "nothing was running")


def status(ctx: typer.Context, target: TargetOption = None, json_output: JsonOption = False,
           profile: ProfileOption = K8sOptions.profile, context: ContextOption = K8sOptions.context,
           kubeconfig: KubeconfigOption = None) -> None:
    """Each component's state, pid, port, health and memory (k8s: each workload's readiness)."""
    app = for_target(ctx, target)
    if app.target is Target.K8S:
        k8s.status(app, K8sOptions(profile, context, kubeconfig), json_output)
        return
    rows = local_stack(app).status()
    if json_output:
        app.print_json([row.__dict__ for row in rows])
    else:
        table = Table(title="Audience Manager — local")
        for column in ("component", "state", "pid", "port", "memory (RSS)", "uptime", "detail"):
            table.add_column(column)
        styles = {"running": "green", "unhealthy": "yellow", "stopped": "dim"}
        for row in rows:
            table.add_row(
                row.name,
                f"[{styles[row.state]}]{row.state}[/]",
                str(row.pid or "-"),
                str(row.port or "-"),
                _mib(row.rss_bytes),
                f"{row.uptime_s:.0f} s" if row.uptime_s is not None else "-",
                row.detail,
            )
        app.console.print(table)
        total = sum(r.rss_bytes for r in rows)
        app.console.print(f"total memory: {_mib(total)}")
    if any(r.state == "unhealthy" for r in rows):
        raise typer.Exit(1)


def logs(
    ctx: typer.Context,
    component: Annotated[str, typer.Argument(help="Component name, as `amctl status` lists it.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many of the last lines to show.")] = 50,
) -> None:
    """Print a component's log (and follow it)."""
    app = get_context(ctx)
    stack = local_stack(app)
    try:
        stack.component(component)
    except StackError as exc:
        app.fail(str(exc), hint=exc.hint)
    path = stack.log_path(component)
    if not path.exists():
        app.fail(f"no log yet for {component}", hint="start the stack with: amctl up")
    for line in processes.tail(path, lines):
        typer.echo(line)
    if follow:
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
