"""`amctl campaign …`: email campaigns to a segment's users, their progress and the mails they sent."""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from amctl.client import CommunicationClient, communication_client
from amctl.context import AppContext, get_context, service_call
from amctl.local.mail_sink import read_mails, store_path
from amctl.options import JsonOption
from amctl.settings import Target

app = typer.Typer(help="Email campaigns: create, follow, cancel, and read the mails they sent.", no_args_is_help=True)

def _template_part(app_: AppContext, inline: str | None, file: Path | None, what: str) -> str:
    if inline is not None and file is not None:
        app_.fail(f"give --{what} or --{what}-file, not both")
    if file is not None:
        try:
            return file.read_text()
        except OSError as exc:
            app_.fail(f"cannot read the {what}: {exc}")
    if inline is None:
        app_.fail(f"a campaign needs a {what}", hint=f"give --{what} TEXT or --{what}-file PATH")
    return inline


def _schedule(app_: AppContext, value: str) -> Any:
    if value in ("now", "on_enter"):
        return value
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        app_.fail(f"--schedule: '{value}' is not now, on_enter or an ISO time such as 2026-12-01T09:00:00Z")
    if at.tzinfo is None:
        app_.fail(f"--schedule: '{value}' has no time zone", hint="add one, e.g. Z or +01:00")
    return {"at": at.isoformat()}


def show_campaign(app_: AppContext, campaign: dict[str, Any], json_output: bool) -> None:
    if json_output:
        app_.print_json(campaign)
        return
    table = Table(show_header=False, title=campaign["name"])
    for key in ("id", "segmentId", "schedule", "sendAt", "status", "audienceSize", "createdAt"):
        table.add_row(key, str(campaign.get(key)))
    table.add_row("subject", campaign["template"]["subject"])
    counts = campaign["counts"]
    table.add_row("deliveries", ", ".join(f"{k} {v}" for k, v in counts.items()))
    if campaign.get("error"):
        table.add_row("error", campaign["error"])
    app_.console.print(table)


def _done(campaign: dict[str, Any]) -> bool:
    if campaign["status"] in ("CANCELLED", "FAILED"):
        return True
    return bool(campaign["status"] == "QUEUED" and campaign["counts"]["queued"] == 0)


def wait_for_delivery(app_: AppContext, client: CommunicationClient, campaign: dict[str, Any],
                      timeout_s: float) -> dict[str, Any]:
    """Follow a scheduled campaign until every recipient has an outcome (sent, failed or skipped)."""
    deadline = time.monotonic() + timeout_s
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total}"),
                  TimeElapsedColumn(), console=app_.err, transient=True) as progress:
        task = progress.add_task("waiting for the fan-out", total=None)
        while not _done(campaign):
            if time.monotonic() > deadline:
                app_.fail(f"campaign {campaign['id']} not finished after {timeout_s:g} s "
                          f"(status {campaign['status']}, {campaign['counts']})",
                          hint=f"follow it with: amctl campaign get {campaign['id']}")
            counts = campaign["counts"]
            finished = counts["sent"] + counts["failed"] + counts["skipped"] + counts["cancelled"]
            progress.update(task, description=f"{campaign['status'].lower()}: sent {counts['sent']}, "
                            f"failed {counts['failed']}, skipped {counts['skipped']}",
                            total=campaign["audienceSize"], completed=finished)
            time.sleep(0.25)
            campaign = client.get(campaign["id"])
    return campaign


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Campaign name.")],
    segment_id: Annotated[str, typer.Option("--segment", help="Id of the segment to send to.")],
    subject: Annotated[str | None, typer.Option(help="Subject template (jinja2; profile fields by name).")] = None,
    subject_file: Annotated[Path | None, typer.Option(help="Subject template from a file.")] = None,
    body: Annotated[str | None, typer.Option(help="Body template, e.g. 'Hi {{ firstName }}'.")] = None,
    body_file: Annotated[Path | None, typer.Option(help="Body template from a file.")] = None,
    schedule: Annotated[str, typer.Option(help="now, on_enter, or an ISO time with a zone.")] = "now",
    wait: Annotated[bool, typer.Option("--wait", help="Follow the campaign until every mail has an outcome.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 120.0,
    json_output: JsonOption = False,
) -> None:
    """Create a campaign: send to the segment's members now or at a time, or to each user who enters it."""
    with service_call(ctx, communication_client) as (app_, client):
        request = {"name": name, "segmentId": segment_id, "channel": "EMAIL", "schedule": _schedule(app_, schedule),
                   "template": {"subject": _template_part(app_, subject, subject_file, "subject"),
                                "body": _template_part(app_, body, body_file, "body")}}
        campaign = client.create(request)
        if wait and campaign["schedule"] == "now":
            campaign = wait_for_delivery(app_, client, campaign, timeout)
        elif wait:
            app_.err.print(f"--wait ignored: a campaign scheduled '{campaign['schedule']}' has nothing to wait for now")
        show_campaign(app_, campaign, json_output)


@app.command("list")
def list_campaigns(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="SCHEDULED, SENDING, QUEUED, ACTIVE, CANCELLED or FAILED.")] = None,
    segment_id: Annotated[str | None, typer.Option("--segment", help="Only this segment's campaigns.")] = None,
    limit: Annotated[int, typer.Option(help="Page size.")] = 50,
    offset: Annotated[int, typer.Option(help="Skip this many.")] = 0,
    json_output: JsonOption = False,
) -> None:
    """List campaigns, newest first, with their delivery counts."""
    with service_call(ctx, communication_client) as (app_, client):
        page = client.list_campaigns(status, segment_id, limit, offset)
        if json_output:
            app_.print_json(page)
            return
        table = Table(title=f"campaigns ({page['total']} in all)")
        for column in ("id", "name", "schedule", "status", "queued", "sent", "failed", "skipped"):
            table.add_column(column)
        for c in page["items"]:
            n = c["counts"]
            table.add_row(c["id"], c["name"], c["schedule"], c["status"], str(n["queued"]), str(n["sent"]),
                          str(n["failed"]), str(n["skipped"]))
        app_.console.print(table)


@app.command("get")
def get(
    ctx: typer.Context,
    campaign_id: str,
    deliveries: Annotated[str | None, typer.Option("--deliveries", help="Also list deliveries in this status "
                                                   "(queued, sent, failed, skipped, cancelled) or 'all'.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Show a campaign, its counts and optionally its deliveries."""
    with service_call(ctx, communication_client) as (app_, client):
        campaign = client.get(campaign_id)
        if deliveries is not None:
            status = None if deliveries == "all" else deliveries
            campaign["deliveries"] = client.deliveries(campaign_id, status, 1000, None)["items"]
        show_campaign(app_, campaign, json_output)
        if deliveries is not None and not json_output:
            table = Table(title="deliveries")
            for column in ("user", "email", "status", "attempts", "reason"):
                table.add_column(column)
            for d in campaign["deliveries"]:
                table.add_row(d["userId"], d["email"] or "", d["status"], str(d["attempts"]), d["reason"] or "")
            app_.console.print(table)


@app.command("cancel")
def cancel(ctx: typer.Context, campaign_id: str, json_output: JsonOption = False) -> None:
    """Cancel a campaign: nothing more is queued and mails not sent yet are not sent."""
    with service_call(ctx, communication_client) as (app_, client):
        show_campaign(app_, client.cancel(campaign_id), json_output)


@app.command("mails")
def mails(ctx: typer.Context, campaign_id: str, json_output: JsonOption = False) -> None:
    """The mails the local SMTP sink received for a campaign (local target)."""
    app_ = get_context(ctx)
    if app_.target is not Target.LOCAL:
        app_.fail("amctl campaign mails reads the local mail sink; on k8s open the mail catcher's web UI")
    received = read_mails(store_path(app_.settings.state_dir), campaign_id)
    if json_output:
        app_.print_json([asdict(m) for m in received])
        return
    if not received:
        app_.err.print(f"no mails received for campaign {campaign_id} yet")
        return
    table = Table(title=f"{len(received)} mails received")
    for column in ("received", "to", "subject", "body"):
        table.add_column(column)
    for m in received:
        body = m.body.strip().replace("\n", " ")
        table.add_row(m.received_at, ", ".join(m.rcpt_to), m.subject, body[:60] + ("…" if len(body) > 60 else ""))
    app_.console.print(table)
