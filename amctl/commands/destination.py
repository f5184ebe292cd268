"""`amctl destination …`: webhooks that receive every user entering or leaving a segment, their
deliveries, and the calls the local webhook receiver answered."""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from amctl.client import destination_client
from amctl.console import add_row, plain
from amctl.context import AppContext, get_context, service_call
from amctl.errors import AmctlError, UsageError
from amctl.load.schedule import parse_duration
from amctl.local.webhook_sink import read_received, signer, store_path, verify
from amctl.options import JsonOption
from amctl.settings import AmctlSettings, Target

app = typer.Typer(help="Destinations: webhooks that receive every user entering or leaving a segment.",
                  no_args_is_help=True)

EVENTS = ("entered", "exited")
MAX_GRACE_S = 7 * 24 * 3600
_NOT_SLUG = re.compile(r"[^a-z0-9]+")

SegmentsOption = Annotated[list[str] | None, typer.Option(
    "--segment", help="Id of a segment whose changes it receives (repeat it; none: every segment).")]
EventsOption = Annotated[str | None, typer.Option(
    help="Which changes it receives: entered, exited or entered,exited (the default).")]
HeadersOption = Annotated[list[str] | None, typer.Option(
    "--header", help="A header sent with every call, NAME=VALUE (repeat it); values are stored sealed.")]


def _slug(name: str) -> str:
    return _NOT_SLUG.sub("-", name.lower()).strip("-") or "destination"


def local_receiver_url(settings: AmctlSettings, name: str) -> str:
    """Where a destination named `name` calls the local webhook receiver (`amctl destination received`)."""
    return f"{settings.url(settings.ports.webhook_sink)}/hooks/{_slug(name)}"


def _events(value: str) -> list[str]:
    events = [e.strip() for e in value.split(",") if e.strip()]
    unknown = [e for e in events if e not in EVENTS]
    if not events or unknown:
        raise UsageError(f"--events: '{value}' is not entered, exited or entered,exited")
    if len(set(events)) != len(events):
        raise UsageError(f"--events: '{value}' names a change twice")
    return events


def _headers(pairs: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name.strip():
            raise UsageError(f"--header: '{pair}' is not NAME=VALUE", hint="e.g. --header Authorization='Bearer …'")
        headers[name.strip()] = value
    return headers


def _time(value: str, option: str) -> str:
    """An ISO time with a zone, or a duration meaning that long ago (`1h`)."""
    try:
        return (datetime.now(UTC) - timedelta(seconds=parse_duration(value))).isoformat()
    except UsageError:
        pass  # not a duration: an ISO time, then
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{option}: '{value}' is neither an ISO time such as 2026-12-01T09:00:00Z "
                         "nor a duration ago such as 2h") from None
    if at.tzinfo is None:
        raise UsageError(f"{option}: '{value}' has no time zone", hint="add one, e.g. Z or +01:00")
    return at.isoformat()


def _say_secret_once(app_: AppContext, destination_id: str) -> None:
    app_.err.print(f"The secret is shown only now and will not be shown again: keep it where the receiver "
                   f"verifies signatures (a new one: amctl destination rotate-secret {destination_id}).",
                   markup=False)


def show_destination(app_: AppContext, destination: dict[str, Any], json_output: bool) -> None:
    if json_output:
        app_.print_json(destination)
        return
    table = Table(show_header=False, title=plain(destination["name"]))
    for key in ("id", "type", "url"):
        add_row(table, key, destination[key])
    segments = destination["segmentIds"]
    add_row(table, "segments", "every segment" if segments is None else ", ".join(segments))
    add_row(table, "events", ", ".join(destination["events"]))
    add_row(table, "headers", ", ".join(destination["headers"]) or "none")
    paused = destination.get("pausedReason")
    add_row(table, "status", destination["status"] + (f" ({paused})" if paused else ""))
    if destination.get("secret"):
        add_row(table, "secret", destination["secret"])
    add_row(table, "secretHint", destination["secretHint"])
    add_row(table, "deliveries", ", ".join(f"{k} {v}" for k, v in destination["counts"].items()))
    lag = destination.get("lagSeconds")
    add_row(table, "lag", "none" if lag is None else f"{lag:.1f} s")
    for key in ("consecutiveFailures", "lastDeliveryAt", "lastError", "createdAt", "updatedAt"):
        add_row(table, key, "" if destination.get(key) is None else destination[key])
    app_.console.print(table)


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Unique destination name.")],
    url: Annotated[str | None, typer.Option(
        help="The http(s) URL it calls; on the local target the local webhook receiver by default.")] = None,
    segment_ids: SegmentsOption = None,
    events: EventsOption = None,
    headers: HeadersOption = None,
    json_output: JsonOption = False,
) -> None:
    """Create a webhook destination; its signing secret is shown this once."""
    app_ = get_context(ctx)
    if url is None:
        if app_.target is not Target.LOCAL:
            raise UsageError("--url is needed on k8s: the local webhook receiver runs on the local target only",
                             hint="give the URL the destination calls, e.g. --url https://example.com/hooks/audiences")
        url = local_receiver_url(app_.settings, name)
    body: dict[str, Any] = {"name": name, "type": "WEBHOOK", "url": url, "segmentIds": segment_ids or None}
    if events is not None:
        body["events"] = _events(events)
    if headers:
        body["headers"] = _headers(headers)
    with service_call(ctx, destination_client) as (_, client):
        destination = client.create(body)
    show_destination(app_, destination, json_output)
    _say_secret_once(app_, destination["id"])


@app.command("list")
def list_destinations(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="Page size.")] = 50,
    offset: Annotated[int, typer.Option(help="Skip this many.")] = 0,
    json_output: JsonOption = False,
) -> None:
    """List destinations with their delivery counts and lag."""
    with service_call(ctx, destination_client) as (app_, client):
        page = client.list_destinations(limit, offset)
    if json_output:
        app_.print_json(page)
        return
    table = Table(title=f"destinations ({page['total']} in all)")
    for column in ("id", "name", "status", "url", "delivered", "pending", "retrying", "failed", "lag"):
        table.add_column(column)
    for d in page["items"]:
        n, lag = d["counts"], d.get("lagSeconds")
        add_row(table, d["id"], d["name"], d["status"], d["url"], n["delivered"], n["pending"], n["retrying"],
                n["failed"], "" if lag is None else f"{lag:.1f} s")
    app_.console.print(table)


@app.command("get")
def get(ctx: typer.Context, destination_id: str, json_output: JsonOption = False) -> None:
    """Show a destination: its status, counts, lag and last error."""
    with service_call(ctx, destination_client) as (app_, client):
        show_destination(app_, client.get(destination_id), json_output)


@app.command("update")
def update(
    ctx: typer.Context,
    destination_id: str,
    name: Annotated[str | None, typer.Option(help="New name.")] = None,
    url: Annotated[str | None, typer.Option(help="New URL.")] = None,
    segment_ids: SegmentsOption = None,
    all_segments: Annotated[bool, typer.Option("--all-segments", help="Receive every segment's changes.")] = False,
    events: EventsOption = None,
    headers: Annotated[list[str] | None, typer.Option(
        "--header", help="NAME=VALUE (repeat it): replaces every stored header with these.")] = None,
    clear_headers: Annotated[bool, typer.Option("--clear-headers", help="Send no extra headers.")] = False,
    active: Annotated[bool | None, typer.Option(
        "--resume/--pause", help="Resume a paused destination (its retries are due now) or pause it.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Change a destination; what is not given stays as it is."""
    if segment_ids and all_segments:
        raise UsageError("give --segment or --all-segments, not both")
    if headers and clear_headers:
        raise UsageError("give --header or --clear-headers, not both")
    if not (name or url or segment_ids or all_segments or events or headers or clear_headers or active is not None):
        raise UsageError("nothing to change", hint="give --name, --url, --segment, --all-segments, --events, "
                                                   "--header, --clear-headers, --pause or --resume")
    with service_call(ctx, destination_client) as (app_, client):
        current = client.get(destination_id)
        body: dict[str, Any] = {
            "name": name or current["name"], "type": current["type"], "url": url or current["url"],
            "segmentIds": None if all_segments else (segment_ids or current["segmentIds"]),
            "events": _events(events) if events else current["events"],
        }
        if headers or clear_headers:  # left out, the stored headers stay
            body["headers"] = _headers(headers or [])
        if active is not None:
            body["status"] = "ACTIVE" if active else "PAUSED"
        show_destination(app_, client.update(destination_id, body), json_output)


@app.command("rotate-secret")
def rotate_secret(
    ctx: typer.Context,
    destination_id: str,
    grace: Annotated[str, typer.Option(
        help="How long calls are also signed with the previous secret (e.g. 30m, 24h; at most 7 days).")] = "24h",
    json_output: JsonOption = False,
) -> None:
    """A new signing secret, shown this once; the previous one signs too until the grace period ends."""
    try:
        grace_s = parse_duration(grace)
    except UsageError as exc:
        raise UsageError(f"--grace: {exc.message}") from None
    if grace_s > MAX_GRACE_S:
        raise UsageError(f"--grace: {grace} is longer than 7 days")
    with service_call(ctx, destination_client) as (app_, client):
        rotated = client.rotate_secret(destination_id, round(grace_s))
    if json_output:
        app_.print_json(rotated)
    else:
        table = Table(show_header=False, title=plain(f"destination {destination_id}"))
        for key in ("secret", "secretHint", "previousSecretExpiresAt"):
            add_row(table, key, rotated.get(key) or "")
        app_.console.print(table)
    _say_secret_once(app_, destination_id)


@app.command("test")
def test(ctx: typer.Context, destination_id: str, json_output: JsonOption = False) -> None:
    """Send one signed test call and show the answer; exits 1 when the destination did not accept it."""
    with service_call(ctx, destination_client) as (app_, client):
        result = client.test(destination_id)
    if json_output:
        app_.print_json(result)
    else:
        table = Table(show_header=False, title=plain(f"test call to {destination_id}"))
        for key in ("messageId", "delivered", "statusCode", "durationMs", "error", "answer"):
            add_row(table, key, "" if result.get(key) is None else result[key])
        app_.console.print(table)
    if not result["delivered"]:
        answered = f"HTTP {result['statusCode']}" if result.get("statusCode") else (result.get("error") or "no answer")
        raise AmctlError(f"the destination did not accept the test call ({answered})",
                         hint=f"see its deliveries and last error: amctl destination get {destination_id}")


@app.command("deliveries")
def deliveries(
    ctx: typer.Context,
    destination_id: str,
    status: Annotated[str | None, typer.Option(help="pending, retrying, delivered or failed.")] = None,
    user_id: Annotated[str | None, typer.Option("--user", help="Only this user's.")] = None,
    limit: Annotated[int, typer.Option(help="Page size (1 to 1000).")] = 100,
    cursor: Annotated[str | None, typer.Option(help="nextCursor from the previous page.")] = None,
    json_output: JsonOption = False,
) -> None:
    """A destination's deliveries, newest first: status, attempts and the last answer of each."""
    with service_call(ctx, destination_client) as (app_, client):
        page = client.deliveries(destination_id, status, user_id, limit, cursor)
    if json_output:
        app_.print_json(page)
        return
    table = Table(title=plain(f"deliveries of {destination_id}"))
    for column in ("message", "user", "event", "status", "attempts", "answer", "changed", "next / delivered", "error"):
        table.add_column(column)
    for d in page["items"]:
        when = d["deliveredAt"] if d["status"] == "delivered" else d["nextAttemptAt"]
        add_row(table, d["messageId"], d["userId"], d["event"], d["status"], d["attempts"],
                d["lastStatusCode"] or "", d["changedAt"], when or "", d["lastError"] or "")
    app_.console.print(table)
    if page.get("nextCursor"):
        app_.console.print(f"more: --cursor {page['nextCursor']}", markup=False)


@app.command("replay")
def replay(
    ctx: typer.Context,
    destination_id: str,
    since: Annotated[str, typer.Option("--from", help="Changes since: an ISO time with a zone, or a duration "
                                                      "ago such as 2h.")],
    until: Annotated[str | None, typer.Option("--to", help="Changes until (same forms); default now.")] = None,
    failed_only: Annotated[bool, typer.Option("--failed-only", help="Only failed deliveries, not delivered ones.")
                           ] = False,
    json_output: JsonOption = False,
) -> None:
    """Send a time range's failed (and delivered) changes again, with the same message ids."""
    body_from, body_to = _time(since, "--from"), (_time(until, "--to") if until else None)
    with service_call(ctx, destination_client) as (app_, client):
        result = client.replay(destination_id, body_from, body_to, failed_only)
    if json_output:
        app_.print_json(result)
    else:
        app_.console.print(f"requeued {result['requeued']} deliveries of {destination_id}", markup=False)


@app.command("delete")
def delete(ctx: typer.Context, destination_id: str) -> None:
    """Delete a destination and its deliveries."""
    with service_call(ctx, destination_client) as (app_, client):
        client.delete(destination_id)
        app_.console.print(f"deleted destination {destination_id}", markup=False)


@app.command("received")
def received(
    ctx: typer.Context,
    path: Annotated[str | None, typer.Option(help="Only calls to this path, e.g. /hooks/crm.")] = None,
    secret: Annotated[str | None, typer.Option(
        help="A destination's whsec_… secret: say whether each call's signature verifies with it.")] = None,
    limit: Annotated[int, typer.Option(help="The newest this many.")] = 20,
    json_output: JsonOption = False,
) -> None:
    """The calls the local webhook receiver answered, oldest first (local target)."""
    app_ = get_context(ctx)
    app_.require(Target.LOCAL, "amctl destination received reads the local webhook receiver, which runs on the "
                               "local target only")
    try:
        webhook = signer(secret) if secret is not None else None
    except ValueError as exc:
        raise UsageError(f"--secret: {exc}") from None
    calls = read_received(store_path(app_.settings.state_dir), path, limit)
    checks = [verify(c, webhook) if webhook is not None else None for c in calls]
    if json_output:
        app_.print_json([asdict(c) | ({"signature": check} if check else {}) for c, check in zip(calls, checks,
                                                                                                  strict=True)])
        return
    if not calls:
        app_.err.print("the webhook receiver has no calls" + (f" to {path}" if path else "") + " yet", markup=False)
        return
    table = Table(title=f"{len(calls)} calls received")
    for column in ("received", "path", "answer", "webhook-id", "event", "user", *(["signature"] if webhook else [])):
        table.add_column(column)
    for call, check in zip(calls, checks, strict=True):
        body = call.json_body()
        event, user = (body.get("event", ""), body.get("userId", "")) if isinstance(body, dict) else ("", "")
        mark = [Text(check, style="green" if check == "verified" else "red")] if check else []
        add_row(table, call.received_at, call.path, call.status, call.webhook.get("webhook-id", ""), event, user,
                *mark)
    app_.console.print(table)
