"""`amctl top`: a live terminal view of the numbers the Grafana dashboards show, for the local target."""

from __future__ import annotations

import time
from typing import Annotated, Any

import httpx
import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from amctl import monitor
from amctl.console import add_row
from amctl.context import AppContext, get_context
from amctl.errors import AmctlError
from amctl.local.stack import LocalStack
from amctl.options import JsonOption
from amctl.settings import Target


class Top:
    """Scrapes every service each interval and keeps the first sample (for counts since start)."""

    def __init__(self, app: AppContext) -> None:
        self.app = app
        self.stack = LocalStack(app.settings)
        self.client = httpx.Client(timeout=2.0)
        s = app.settings
        self.urls = {name: f"{s.url(getattr(s.ports, port))}/metrics" for name, port in monitor.SERVICES.items()}
        self.first = self.previous = self.sample()

    def sample(self) -> dict[str, monitor.Sample]:
        return {name: monitor.scrape(self.client, url) for name, url in self.urls.items()}

    def snapshot(self) -> dict[str, Any]:
        current = self.sample()
        before, self.previous = self.previous, current
        memory = self.stack.memory()
        broker = self.stack.broker_size()
        services = {name: {**monitor.service_row(before[name], current[name]), "rss_mib": round(
            memory.get(name, 0) / 2**20, 1)} for name in self.urls}
        return {
            "interval_s": round(current["rule-engine"].at - before["rule-engine"].at, 2),
            "services": services,
            "pipeline": monitor.pipeline(before, current, self.first),
            "memory_mib": {name: round(rss / 2**20, 1) for name, rss in memory.items()},
            "broker": broker.as_json() | {"summary": broker.summary()} if broker is not None else None,
            "segments": monitor.segment_sizes(self.client, self.app.settings.url(self.app.settings.ports.segment_api)),
        }

    def close(self) -> None:
        self.client.close()


def _value(value: Any, unit: str = "") -> str:
    return "-" if value is None else f"{value:,}{unit}" if isinstance(value, int | float) else str(value)


def render(snapshot: dict[str, Any]) -> Group:
    services = Table(title=f"services (last {snapshot['interval_s']:g} s)", title_justify="left")
    for column in ("service", "req/s", "5xx", "p99", "memory"):
        services.add_column(column, justify="left" if column == "service" else "right")
    for name, row in snapshot["services"].items():
        if not row["up"]:
            services.add_row(name, "[red]down[/]", "", "", _value(row["rss_mib"], " MiB"))
            continue
        errors = f"{row['errors_5xx']:.1%}" if row["errors_5xx"] else "0"
        services.add_row(name, _value(row["requests_per_s"]), errors, _value(row["p99_ms"], " ms"),
                         _value(row["rss_mib"], " MiB"))
    others = {k: v for k, v in snapshot["memory_mib"].items() if k not in snapshot["services"]}
    for name, mib in others.items():
        services.add_row(f"[dim]{name}[/]", "", "", "", _value(mib, " MiB"))
    services.add_row("[bold]total[/]", "", "", "", _value(round(sum(snapshot["memory_mib"].values()), 1), " MiB"))
    broker = snapshot["broker"]  # the memory broker's RSS grows with every record it keeps
    size = Text(f"broker: {broker['summary']}" if broker is not None else "broker: not running", style="dim")

    p = snapshot["pipeline"]
    flow = Table(title="events and segments", title_justify="left", show_header=False)
    flow.add_column("what")
    flow.add_column("value", justify="right")
    job = "[green]RUNNING[/]" if p["job_running"] else "[red]not running[/]"
    for label, value in (
        ("events accepted / s", _value(p["events_accepted_per_s"])),
        ("events rejected or rate-limited / s", _value(p["events_rejected_per_s"])),
        ("events applied by the rule job / s", _value(p["events_applied_per_s"])),
        ("backlog (accepted minus applied since top started)", _value(p["backlog_since_start"])),
        ("users entering / exiting segments / s", f"{_value(p['entered_per_s'])} / {_value(p['exited_per_s'])}"),
        ("event → membership written, p99", _value(p["assignment_p99_ms"], " ms")),
        ("rule job", f"{job}, busy {p['job_busy']:.0%}, checkpoint {_value(p['checkpoint_age_s'], ' s')} ago"),
        ("emails sent / failed / s", f"{_value(p['emails_sent_per_s'])} / {_value(p['emails_failed_per_s'])}"),
        ("webhooks delivered / failed / s",
         f"{_value(p['webhooks_delivered_per_s'])} / {_value(p['webhooks_failed_per_s'])}"),
    ):
        flow.add_row(label, value)

    segments = Table(title="largest segments", title_justify="left")
    segments.add_column("segment")
    segments.add_column("members", justify="right")
    for s in snapshot["segments"]:
        add_row(segments, s["name"], f"{s['size']:,}")
    return Group(services, size, flow, segments)


def top(
    ctx: typer.Context,
    interval: Annotated[float, typer.Option("--interval", "-i", min=0.5, help="Seconds between refreshes.")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="One snapshot over one interval, then exit.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Live request rates and p99 per service, events/s, segment assignments/s, segment sizes,
    the rule job's state and memory per component. Ctrl-C to leave."""
    app = get_context(ctx)
    app.require(Target.LOCAL, "amctl top reads the local stack; on k8s open Grafana (amctl up --target k8s "
                "lists its URL)")
    if not any(row.state != "stopped" for row in LocalStack(app.settings).status().components):
        raise AmctlError("nothing is running", hint="start the platform with: amctl up")
    view = Top(app)
    try:
        if once or json_output:
            time.sleep(interval)
            snapshot = view.snapshot()
            if json_output:
                app.print_json(snapshot)
            else:
                app.console.print(render(snapshot))
            return
        with Live(Text(f"sampling for {interval:g} s …"), console=app.console, refresh_per_second=4) as live:
            while True:
                time.sleep(interval)
                live.update(render(view.snapshot()))
    except KeyboardInterrupt:
        pass
    finally:
        view.close()


def register(app: typer.Typer) -> None:
    app.command()(top)
