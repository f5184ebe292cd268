"""`amctl events send`: one event from flags, many from a JSONL file, or an open-model load."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live

from amctl.client import ingestion_client
from amctl.context import AppContext, get_context
from amctl.errors import AmctlError, UsageError
from amctl.load.profile import EventFactory, LoadConfigError, parse_mix
from amctl.load.report import live_table, summary_table
from amctl.load.runner import LoadPlan, LoadResult, run_load
from amctl.load.schedule import ArrivalSchedule, Stage, parse_duration, parse_ramp
from amctl.load.thresholds import THRESHOLD_BREACHED_EXIT, parse_threshold
from amctl.options import JsonOption

app = typer.Typer(help="Send user events to the Ingestion API.", no_args_is_help=True)


@app.command("send")
def send(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option("--user", "-u", help="userId of a single event.")] = None,
    event_type: Annotated[str, typer.Option("--type", help="eventType of a single event.")] = "page_view",
    prop: Annotated[list[str] | None, typer.Option(
        "--prop", "-p", help="A property KEY=VALUE (VALUE parsed as JSON if it can be).")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Events as JSON lines ('-' for stdin).")] = None,
    rate: Annotated[float | None, typer.Option(help="Load mode: events per second, by the clock.")] = None,
    duration: Annotated[str, typer.Option(help="Load mode: how long (30s, 2m).")] = "10s",
    ramp: Annotated[str | None, typer.Option(help="Load mode: stages rate:duration,… from 0 (like k6).")] = None,
    users: Annotated[int, typer.Option(help="Load mode: size of the user id space.")] = 1000,
    user_prefix: Annotated[str, typer.Option(
        help="Load mode: userIds are this prefix and a number (a run of its own: a unique prefix).")] = "load-user-",
    distribution: Annotated[str, typer.Option(help="Load mode: uniform or zipf over users.")] = "uniform",
    mix: Annotated[str, typer.Option(help="Load mode: default, purchase-heavy, browse, or type=w,…")] = "default",
    batch: Annotated[int, typer.Option(help="Load mode: events per request (uses /api/events/batch when > 1).")] = 1,
    concurrency: Annotated[int, typer.Option(help="Load mode: requests in flight at most.")] = 256,
    threshold: Annotated[list[str] | None, typer.Option(
        help="Load mode: pass/fail criterion such as 'p99<50ms' or 'errors<0.1%'; exit 99 when breached.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Send events: `--user U --type T -p amount=10`, `--file events.jsonl`, or `--rate R --duration D`."""
    app_ctx = get_context(ctx)
    modes = [m for m, on in (("single", user is not None), ("file", file is not None),
                             ("load", rate is not None or ramp is not None)) if on]
    if len(modes) != 1:
        raise UsageError("choose one of: --user (one event), --file (JSON lines), --rate/--ramp (load)",
                         hint="e.g. amctl events send --user alice --type purchase -p amount=1500")
    if modes == ["load"]:
        run_load_command(app_ctx, rate, duration, ramp, users, distribution, mix, batch, concurrency,
                         threshold or [], json_output, user_prefix)
    elif file is not None:
        send_file(app_ctx, file, json_output)
    elif user is not None:
        event = {"userId": user, "eventType": event_type, "properties": parse_props(prop or [])}
        send_events(app_ctx, [event], json_output)


def parse_props(pairs: list[str], option: str = "--prop") -> dict[str, Any]:
    """KEY=VALUE pairs of `option` as a mapping, each VALUE parsed as JSON if it can be."""
    props: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} '{pair}' is not KEY=VALUE")
        try:
            props[key] = json.loads(raw)
        except json.JSONDecodeError:
            props[key] = raw
    return props


def send_file(app: AppContext, file: Path, json_output: bool) -> None:
    text = typer.get_text_stream("stdin").read() if str(file) == "-" else _read(file)
    events = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise AmctlError(f"{file}:{number}: not JSON ({exc.msg}); nothing was sent") from None
    send_events(app, events, json_output)


def _read(file: Path) -> str:
    try:
        return file.read_text()
    except OSError as exc:
        raise AmctlError(f"cannot read {file}: {exc.strerror}") from None


def send_events(app: AppContext, events: list[dict[str, Any]], json_output: bool) -> None:
    """Single events one by one; files in batches of 500, reporting every rejected line."""
    client = ingestion_client(app.settings)
    results: list[dict[str, Any]] = []
    try:
        if len(events) == 1:
            results.append({"index": 0, **client.send(events[0])})
        else:
            for start in range(0, len(events), 500):
                answer = client.send_batch(events[start:start + 500])
                results += [{**r, "index": r["index"] + start} for r in answer["results"]]
    finally:
        client.close()
    failed = [r for r in results if r.get("status") in ("rejected", "failed")]
    if json_output:
        app.print_json(results)
    else:
        for r in failed:
            app.err.print(f"  event {r['index'] + 1}: {r['status']}: {'; '.join(r.get('errors', []))}", markup=False)
        accepted = sum(1 for r in results if r.get("status") in ("accepted", "duplicate"))
        app.console.print(f"{accepted} of {len(results)} event(s) accepted"
                          + (f": {results[0]['eventId']}" if len(results) == 1 else ""), markup=False)
    if failed:
        raise typer.Exit(1)


def run_load_command(app: AppContext, rate: float | None, duration: str, ramp: str | None, users: int,
                     distribution: str, mix: str, batch: int, concurrency: int, thresholds: list[str],
                     json_output: bool, user_prefix: str = "load-user-") -> None:
    stages = parse_ramp(ramp) if ramp else [Stage(float(rate or 0), parse_duration(duration))]
    if batch < 1 or batch > 500:
        raise LoadConfigError("--batch must be between 1 and 500")
    checks = [parse_threshold(t) for t in thresholds]
    settings = app.settings
    path = "/api/events/batch" if batch > 1 else "/api/events"
    plan = LoadPlan(
        url=settings.url(settings.ports.ingestion_api) + path,
        schedule=ArrivalSchedule([Stage(s.rate / batch, s.duration_s) for s in stages],
                                 start_rate=0.0 if ramp else None),
        events=EventFactory(users=users, mix=parse_mix(mix), distribution=distribution, user_prefix=user_prefix),
        batch_size=batch,
        concurrency=concurrency,
        headers=settings.auth_headers(),
    )
    # off a terminal the last frame would stay behind without its newline: the summary says it all anyway
    with Live(console=app.err, refresh_per_second=4, transient=json_output or not app.err.is_terminal) as live:
        def progress(result: LoadResult) -> None:
            live.update(live_table(result))

        result = asyncio.run(run_load(plan, progress))
    summary = result.as_json(checks)
    # every request refused (the load runner counts failures by the exception's name): nothing listens there
    if summary["completed"] and summary["statuses"].get("ConnectionRefusedError", 0) == summary["completed"]:
        raise AmctlError(f"cannot reach the Ingestion API at {settings.url(settings.ports.ingestion_api)}",
                         hint="is the stack up? (amctl up)")
    if json_output:
        app.print_json(summary)
    else:
        app.console.print(summary_table(summary))
        if summary["dropped"]:
            app.err.print(f"{summary['dropped']:,} sends were dropped: the target did not keep up "
                          f"with {summary['target_rate']:,.0f}/s at concurrency {concurrency}", style="yellow",
                          markup=False)
    if any(not t["passed"] for t in summary["thresholds"]):
        raise typer.Exit(THRESHOLD_BREACHED_EXIT)
