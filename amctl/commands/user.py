"""`amctl user …`: what the platform knows about a user, linking a visitor's anonymous id, erasure."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from amctl.client import ApiError, ingestion_client, segment_client
from amctl.commands.events import parse_props
from amctl.console import add_row, plain
from amctl.context import service_call
from amctl.explain import cause, explanation
from amctl.options import JsonOption

app = typer.Typer(help="What the platform knows about a user; link an anonymous id; erase a user.",
                  no_args_is_help=True)

UserIdArgument = Annotated[str, typer.Argument(help="A user id, or an anonymous id linked to one.")]
AfterOption = Annotated[str | None, typer.Option(
    "--after", help="Answer once this eventId is applied to the user (one of its last 16 events).")]
WaitOption = Annotated[float | None, typer.Option(
    "--wait", help="Seconds the service waits for --after (default 2, at most 10).")]


@app.command("segments")
def user_segments(ctx: typer.Context, user_id: UserIdArgument, after: AfterOption = None, wait: WaitOption = None,
                  json_output: JsonOption = False) -> None:
    """The segments a user is in, since when, and what made the user enter."""
    with service_call(ctx, segment_client) as (context, client):
        result = client.user_segments(user_id, after, wait)
        if json_output:
            context.print_json(result)
            return
        table = Table(title=plain(f"segments of {_named(result)}"))
        for column in ("segment", "id", "since", "version", "because"):
            table.add_column(column)
        for s in result["segments"]:
            because = cause(s["because"], s["segmentId"]) if s.get("because") else "-"
            add_row(table, s["name"], s["segmentId"], s["enteredAt"], s["segmentVersion"], because)
        context.console.print(table)


@app.command("explain")
def user_explain(ctx: typer.Context, user_id: UserIdArgument,
                 segment_id: Annotated[str, typer.Argument(help="The segment's id.")],
                 after: AfterOption = None, wait: WaitOption = None, json_output: JsonOption = False) -> None:
    """Why a user is (or is not) in a segment: its rule on the user's profile, node by node, and the reason
    the user entered for."""
    with service_call(ctx, segment_client) as (context, client):
        result = client.explain(user_id, segment_id, after, wait)
        if json_output:
            context.print_json(result)
            return
        context.console.print(explanation(result))


@app.command("profile")
def user_profile(ctx: typer.Context, user_id: UserIdArgument, after: AfterOption = None, wait: WaitOption = None,
                 json_output: JsonOption = False) -> None:
    """A user's traits, aggregates and aliases (the anonymous ids linked to it)."""
    with service_call(ctx, segment_client) as (context, client):
        profile = client.user_profile(user_id, after, wait)
        if json_output:
            context.print_json(profile)
            return
        table = Table(show_header=False, title=plain(f"profile of {_named(profile)}"))
        for key, value in profile.items():
            if key == "resolvedFrom":
                continue  # in the title
            if key == "aliases":
                value = ", ".join(value) if value else "none"
            add_row(table, key, json.dumps(value) if isinstance(value, dict | list) else value)
        context.console.print(table)


def _named(answer: dict[str, Any]) -> str:
    """The user answered for, and the alias it was asked by when it was one."""
    alias = answer.get("resolvedFrom")
    return f"{answer['userId']} (asked as {alias})" if alias else str(answer["userId"])


@app.command("identify")
def identify(
    ctx: typer.Context,
    user_id: Annotated[str, typer.Argument(help="The known user's id.")],
    anonymous_id: Annotated[str, typer.Argument(help="The visitor's anonymous id to link to it.")],
    trait: Annotated[list[str] | None, typer.Option(
        "--trait", help="A trait KEY=VALUE for the user (VALUE parsed as JSON if it can be).")] = None,
    json_output: JsonOption = False,
) -> None:
    """Link a visitor's anonymous id to a known user: its profile merges into the user's, later events follow."""
    traits = parse_props(trait or [], "--trait")
    with service_call(ctx, ingestion_client) as (context, client):
        result = client.identify(user_id, anonymous_id, traits)
        if json_output:
            context.print_json(result)
            return
        if result.get("status") == "already linked":
            context.console.print(f"{anonymous_id} was already linked to {user_id}", markup=False)
        else:
            context.console.print(f"linked {anonymous_id} to {user_id}", markup=False)


@app.command("delete")
def delete(
    ctx: typer.Context,
    user_id: UserIdArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Erase a user: profile, memberships and aliases (an audit row without the id stays)."""
    with service_call(ctx, segment_client) as (context, client):
        try:
            profile: dict[str, Any] | None = client.user_profile(user_id)
        except ApiError as exc:
            if exc.status != 404:
                raise
            profile = None
        target = str(profile["userId"]) if profile else user_id
        aliases = list(profile.get("aliases", [])) if profile else []
        what = f"user {target}" + (f" and its {len(aliases)} alias(es): {', '.join(aliases)}" if aliases else "")
        if profile is None:
            what += " (no profile stored)"
        context.err.print(f"erasing {what}", markup=False, highlight=False)
        if not yes and sys.stdin.isatty() and not typer.confirm("delete?", default=False):
            raise typer.Abort()
        client.delete_user(target)  # 202: the rule job makes the memberships exit, then the store's rows go
        context.console.print(f"erasure of {what} under way: gone from reads within a second or two", markup=False)
