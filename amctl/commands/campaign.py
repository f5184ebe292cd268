"""`amctl campaign …`: email campaigns to a segment's users, their progress and the mails they sent."""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from amctl.client import CommunicationClient, communication_client
from amctl.console import add_row, plain
from amctl.context import AppContext, get_context, service_call
from amctl.errors import AmctlError, UsageError
from amctl.local.mail_sink import ReceivedMail, read_mails, store_path
from amctl.options import JsonOption
from amctl.settings import Target

app = typer.Typer(help="Email campaigns: create, follow, cancel, and read the mails they sent.", no_args_is_help=True)


def _template_part(inline: str | None, file: Path | None, what: str) -> str:
    if inline is not None and file is not None:
        raise UsageError(f"give --{what} or --{what}-file, not both")
    if file is not None:
        try:
            return file.read_text()
        except OSError as exc:
            raise AmctlError(f"cannot read the {what}: {exc}") from None
    if inline is None:
        raise UsageError(f"a campaign needs a {what}", hint=f"give --{what} TEXT or --{what}-file PATH")
    return inline


def _schedule(value: str) -> Any:
    if value in ("now", "on_enter"):
        return value
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--schedule: '{value}' is not now, on_enter or an ISO time such as 2026-12-01T09:00:00Z"
                         ) from None
    if at.tzinfo is None:
        raise UsageError(f"--schedule: '{value}' has no time zone", hint="add one, e.g. Z or +01:00")
    return {"at": at.isoformat()}


def _frequency_cap(value: str | None, none: bool) -> dict[str, Any]:
    """`--frequency-cap 2/P1D` → the request's frequencyCap; `--no-frequency-cap` → null (no default either)."""
    if none and value is not None:
        raise UsageError("give --frequency-cap or --no-frequency-cap, not both")
    if none:
        return {"frequencyCap": None}
    if value is None:
        return {}  # the installation's default cap applies
    count, sep, within = value.partition("/")
    if not (sep and count.isdigit()):
        raise UsageError(f"--frequency-cap: '{value}' is not MAX/DURATION", hint="e.g. --frequency-cap 2/P1D")
    return {"frequencyCap": {"max": int(count), "within": within}}


def _quiet_hours(value: str | None, timezone: str) -> dict[str, Any]:
    """`--quiet-hours 21:00-08:00` → the request's quietHours, in `timezone` for recipients without one."""
    if value is None:
        return {}
    start, sep, end = value.partition("-")
    if not sep:
        raise UsageError(f"--quiet-hours: '{value}' is not START-END", hint="e.g. --quiet-hours 21:00-08:00")
    return {"quietHours": {"start": start.strip(), "end": end.strip(), "timezone": timezone}}


def show_campaign(app_: AppContext, campaign: dict[str, Any], json_output: bool) -> None:
    if json_output:
        app_.print_json(campaign)
        return
    table = Table(show_header=False, title=plain(campaign["name"]))
    for key in ("id", "segmentId", "schedule", "sendAt", "status", "audienceSize", "createdAt", "completedAt"):
        add_row(table, key, str(campaign.get(key)))
    add_row(table, "subject", campaign["template"]["subject"])
    add_row(table, "html part", "yes" if campaign["template"].get("bodyHtml") else "no")
    cap, quiet = campaign.get("frequencyCap"), campaign.get("quietHours")
    add_row(table, "frequency cap", f"{cap['max']} within {cap['within']}" if cap else "none")
    add_row(table, "quiet hours", f"{quiet['start']}-{quiet['end']} ({quiet['timezone']})" if quiet else "none")
    counts = campaign["counts"]
    add_row(table, "deliveries", ", ".join(f"{k} {v}" for k, v in counts.items()))
    if campaign.get("error"):
        add_row(table, "error", campaign["error"])
    app_.console.print(table)


def _done(campaign: dict[str, Any]) -> bool:
    if campaign["status"] in ("CANCELLED", "FAILED"):
        return True
    return bool(campaign["status"] == "COMPLETED")


def wait_for_delivery(app_: AppContext, client: CommunicationClient, campaign: dict[str, Any],
                      timeout_s: float) -> dict[str, Any]:
    """Follow a scheduled campaign until it is COMPLETED (every recipient has an outcome), CANCELLED or FAILED."""
    deadline = time.monotonic() + timeout_s
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total}"),
                  TimeElapsedColumn(), console=app_.err, transient=True) as progress:
        task = progress.add_task("waiting for the fan-out", total=None)
        while not _done(campaign):
            if time.monotonic() > deadline:
                raise AmctlError(f"campaign {campaign['id']} not finished after {timeout_s:g} s "
                                 f"(status {campaign['status']}, {campaign['counts']})",
                                 hint=f"follow it with: amctl campaign get {campaign['id']}")
            counts = campaign["counts"]
            finished = counts["sent"] + counts["failed"] + counts["skipped"] + counts["cancelled"]
            held = f", deferred {counts['deferred']} (quiet hours)" if counts.get("deferred") else ""
            progress.update(task, description=escape(f"{campaign['status'].lower()}: sent {counts['sent']}, "
                                                     f"failed {counts['failed']}, skipped {counts['skipped']}{held}"),
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
    body_html: Annotated[str | None, typer.Option(help="An HTML part (autoescaped), e.g. '<p>Hi {{ firstName }}'.")
                         ] = None,
    body_html_file: Annotated[Path | None, typer.Option(help="The HTML part from a file.")] = None,
    schedule: Annotated[str, typer.Option(help="now, on_enter, or an ISO time with a zone.")] = "now",
    frequency_cap: Annotated[str | None, typer.Option(
        help="MAX/DURATION: skip recipients who already got MAX mails from any campaign within it, e.g. 2/P1D.")
    ] = None,
    no_frequency_cap: Annotated[bool, typer.Option("--no-frequency-cap",
                                                   help="No cap, not even the installation's default.")] = False,
    quiet_hours: Annotated[str | None, typer.Option(
        help="START-END in the recipient's local time (their timezone trait), e.g. 21:00-08:00: mail waits.")
    ] = None,
    quiet_timezone: Annotated[str, typer.Option(help="Zone for recipients without a timezone trait.")] = "UTC",
    wait: Annotated[bool, typer.Option("--wait", help="Follow the campaign until every mail has an outcome.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 120.0,
    json_output: JsonOption = False,
) -> None:
    """Create a campaign: send to the segment's members now or at a time, or to each user who enters it."""
    with service_call(ctx, communication_client) as (app_, client):
        template = {"subject": _template_part(subject, subject_file, "subject"),
                    "body": _template_part(body, body_file, "body")}
        if body_html is not None or body_html_file is not None:
            template["bodyHtml"] = _template_part(body_html, body_html_file, "body-html")
        request = {"name": name, "segmentId": segment_id, "channel": "EMAIL", "schedule": _schedule(schedule),
                   "template": template, **_frequency_cap(frequency_cap, no_frequency_cap),
                   **_quiet_hours(quiet_hours, quiet_timezone)}
        campaign = client.create(request)
        if wait and campaign["schedule"] == "now":
            campaign = wait_for_delivery(app_, client, campaign, timeout)
        elif wait:
            app_.err.print(f"--wait ignored: a campaign scheduled '{campaign['schedule']}' has nothing to wait for now",
                           markup=False)
        show_campaign(app_, campaign, json_output)


@app.command("list")
def list_campaigns(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(
        help="SCHEDULED, SENDING, COMPLETED, ACTIVE, CANCELLED or FAILED.")] = None,
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
            add_row(table, c["id"], c["name"], c["schedule"], c["status"], n["queued"], n["sent"], n["failed"],
                    n["skipped"])
        app_.console.print(table)


@app.command("get")
def get(
    ctx: typer.Context,
    campaign_id: str,
    deliveries: Annotated[str | None, typer.Option("--deliveries", help="Also list deliveries in this status "
                                                   "(queued, sent, failed, skipped, deferred, cancelled) or 'all'.")
                          ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the campaign until it is COMPLETED.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 120.0,
    json_output: JsonOption = False,
) -> None:
    """Show a campaign, its counts and optionally its deliveries."""
    with service_call(ctx, communication_client) as (app_, client):
        campaign = client.get(campaign_id)
        if wait and campaign["schedule"] != "on_enter":
            campaign = wait_for_delivery(app_, client, campaign, timeout)
        elif wait:
            app_.err.print("--wait ignored: an on_enter campaign stays ACTIVE until it is cancelled", markup=False)
        if deliveries is not None:
            status = None if deliveries == "all" else deliveries
            campaign["deliveries"] = client.deliveries(campaign_id, status, 1000, None)["items"]
        show_campaign(app_, campaign, json_output)
        if deliveries is not None and not json_output:
            table = Table(title="deliveries")
            for column in ("user", "email", "status", "attempts", "reason"):
                table.add_column(column)
            for d in campaign["deliveries"]:
                add_row(table, d["userId"], d["email"] or "", d["status"], d["attempts"], d["reason"] or "")
            app_.console.print(table)


@app.command("cancel")
def cancel(ctx: typer.Context, campaign_id: str, json_output: JsonOption = False) -> None:
    """Cancel a campaign: nothing more is queued and mails not sent yet are not sent."""
    with service_call(ctx, communication_client) as (app_, client):
        show_campaign(app_, client.cancel(campaign_id), json_output)


def _parts(mail: ReceivedMail) -> str:
    """What a mailbox provider looks for beside the text: the unsubscribe header, an HTML part, a signature."""
    found = [label for label, present in (("List-Unsubscribe", mail.has_list_unsubscribe),
                                          ("HTML", mail.body_html is not None),
                                          ("DKIM", mail.header("DKIM-Signature") is not None)) if present]
    return ", ".join(found) or "-"


@app.command("mails")
def mails(ctx: typer.Context, campaign_id: str, json_output: JsonOption = False) -> None:
    """The mails the local SMTP sink received for a campaign (local target); --json includes every header."""
    app_ = get_context(ctx)
    app_.require(Target.LOCAL, "amctl campaign mails reads the local mail sink; on k8s open the mail catcher's web UI")
    received = read_mails(store_path(app_.settings.state_dir), campaign_id)
    if json_output:
        app_.print_json([asdict(m) for m in received])
        return
    if not received:
        app_.err.print(f"no mails received for campaign {campaign_id} yet", markup=False)
        return
    table = Table(title=f"{len(received)} mails received")
    for column in ("received", "to", "subject", "body", "has"):
        table.add_column(column)
    for m in received:
        body = m.body.strip().replace("\n", " ")
        add_row(table, m.received_at, ", ".join(m.rcpt_to), m.subject, body[:60] + ("…" if len(body) > 60 else ""),
                _parts(m))
    app_.console.print(table)
