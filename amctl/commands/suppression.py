"""`amctl suppression …`: the addresses no campaign mails (unsubscribed, bounced, opted out, or by hand)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from amctl.client import communication_client
from amctl.console import add_row, plain
from amctl.context import AppContext, service_call
from amctl.options import JsonOption

app = typer.Typer(help="The suppression list: addresses no campaign mails, with why and since when.",
                  no_args_is_help=True)

AddressArgument = Annotated[str, typer.Argument(help="An email address (matched trimmed and lower-cased).")]
FIELDS = ("reason", "createdAt", "campaignId", "userId", "detail")


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def show_suppression(app_: AppContext, entry: dict[str, Any], json_output: bool) -> None:
    if json_output:
        app_.print_json(entry)
        return
    table = Table(show_header=False, title=plain(entry["address"]))
    for key in FIELDS:
        add_row(table, key, _cell(entry.get(key)))
    app_.console.print(table)


@app.command("list")
def list_suppressions(
    ctx: typer.Context,
    reason: Annotated[str | None, typer.Option(
        help="Only this reason: unsubscribed, hard_bounce, opted_out or manual.")] = None,
    limit: Annotated[int, typer.Option(help="Page size (1 to 1000).")] = 100,
    cursor: Annotated[str | None, typer.Option(help="nextCursor from the previous page.")] = None,
    json_output: JsonOption = False,
) -> None:
    """List suppressed addresses in address order, with their reason and when they were added."""
    with service_call(ctx, communication_client) as (app_, client):
        page = client.list_suppressions(reason, limit, cursor)
    if json_output:
        app_.print_json(page)
        return
    table = Table(title=f"suppressed addresses ({page['total']}{f' {reason}' if reason else ''} in all)")
    for column in ("address", *FIELDS):
        table.add_column(column)
    for entry in page["items"]:
        add_row(table, entry["address"], *(_cell(entry.get(key)) for key in FIELDS))
    app_.console.print(table)
    if page.get("nextCursor"):
        app_.console.print(f"more: --cursor {page['nextCursor']}", markup=False)


@app.command("get")
def get(ctx: typer.Context, address: AddressArgument, json_output: JsonOption = False) -> None:
    """Show why an address is suppressed; exits 1 when it is not."""
    with service_call(ctx, communication_client) as (app_, client):
        show_suppression(app_, client.get_suppression(address), json_output)


@app.command("add")
def add(
    ctx: typer.Context,
    address: AddressArgument,
    reason: Annotated[str | None, typer.Option(
        help="manual (the default) or unsubscribed, for an unsubscribe received another way.")] = None,
    detail: Annotated[str | None, typer.Option(help="Why, for whoever reads the entry later.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Suppress an address: no campaign mails it from now on. One already suppressed stays as it was."""
    with service_call(ctx, communication_client) as (app_, client):
        entry, added = client.add_suppression(address, reason, detail)
    if not added:  # on stderr: --json stays the entry alone
        app_.err.print(f"{entry['address']} was already suppressed ({entry['reason']}, since {entry['createdAt']}); "
                       "its entry is unchanged", markup=False)
    show_suppression(app_, entry, json_output)


@app.command("remove")
def remove(ctx: typer.Context, address: AddressArgument) -> None:
    """Mail an address again (needs an admin key). A bounce or the emailOptOut trait suppresses it anew."""
    with service_call(ctx, communication_client) as (app_, client):
        client.remove_suppression(address)
    app_.console.print(f"removed {address.strip()} from the suppression list: campaigns mail it again",
                       markup=False)
