"""`amctl segment …`: segments, their members, their stats and insights (overlap, history, breakdown)."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
import yaml
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from amctl.client import MemberExport, SegmentClient, segment_client
from amctl.console import add_row, plain
from amctl.context import AppContext, service_call
from amctl.errors import AmctlError, UsageError
from amctl.options import JsonOption

segment_app = typer.Typer(help="Create, inspect and change segments.", no_args_is_help=True)

RulesOption = Annotated[str | None, typer.Option("--rules", help="Rule tree as inline JSON.")]
RulesFileOption = Annotated[Path | None, typer.Option("--rules-file", help="Rule tree from a JSON or YAML file.")]


@contextmanager
def segments(ctx: typer.Context) -> Iterator[tuple[AppContext, SegmentClient]]:
    with service_call(ctx, segment_client) as pair:
        yield pair


def read_rules(inline: str | None, file: Path | None) -> dict[str, Any] | None:
    """The rule tree of --rules (JSON) or --rules-file (JSON or YAML); None when neither is given."""
    if inline and file:
        raise UsageError("give --rules or --rules-file, not both")
    if inline:
        try:
            parsed = json.loads(inline)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--rules is not JSON: {exc}") from None
    elif file:
        try:
            parsed = yaml.safe_load(file.read_text())  # YAML is a superset of JSON
        except (OSError, yaml.YAMLError) as exc:
            raise AmctlError(f"cannot read the rules: {exc}") from None
    else:
        return None
    if not isinstance(parsed, dict):
        raise UsageError("rules must be a JSON object, e.g. '{\"conditions\":[...]}'")
    return parsed


def show_segment(app: AppContext, segment: dict[str, Any], json_output: bool) -> None:
    if json_output:
        app.print_json(segment)
        return
    table = Table(show_header=False, title=plain(segment["name"]))
    for key in ("id", "type", "status", "version", "description", "createdAt", "updatedAt"):
        add_row(table, key, segment.get(key, ""))
    add_row(table, "rules", json.dumps(segment.get("rules")))
    app.console.print(table)
    for warning in segment.get("warnings", []):
        app.err.print(Text.assemble(("warning:", "yellow"), f" {warning}"), highlight=False)


@segment_app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Unique segment name.")],
    rules: RulesOption = None,
    rules_file: RulesFileOption = None,
    description: Annotated[str, typer.Option(help="What the segment is for.")] = "",
    static: Annotated[bool, typer.Option("--static", help="A STATIC segment (explicit members, no rules).")] = False,
    json_output: JsonOption = False,
) -> None:
    """Create a segment (DYNAMIC with rules, or --static)."""
    with segments(ctx) as (app, client):
        body = {"name": name, "description": description, "type": "STATIC" if static else "DYNAMIC",
                "rules": read_rules(rules, rules_file)}
        show_segment(app, client.create(body), json_output)


@segment_app.command("list")
def list_segments(
    ctx: typer.Context,
    segment_type: Annotated[str | None, typer.Option("--type", help="DYNAMIC or STATIC.")] = None,
    status: Annotated[str | None, typer.Option(help="ACTIVE or PAUSED.")] = None,
    limit: Annotated[int, typer.Option(help="Page size.")] = 50,
    offset: Annotated[int, typer.Option(help="Skip this many.")] = 0,
    json_output: JsonOption = False,
) -> None:
    """List segments."""
    with segments(ctx) as (app, client):
        page = client.list_segments(segment_type, status, limit, offset)
        if json_output:
            app.print_json(page)
            return
        table = Table(title=f"segments ({page['total']} in all)")
        for column in ("id", "name", "type", "status", "version", "updated"):
            table.add_column(column)
        for s in page["items"]:
            add_row(table, s["id"], s["name"], s["type"], s["status"], s["version"], s["updatedAt"])
        app.console.print(table)


@segment_app.command("get")
def get(ctx: typer.Context, segment_id: str, json_output: JsonOption = False) -> None:
    """Show one segment."""
    with segments(ctx) as (app, client):
        show_segment(app, client.get(segment_id), json_output)


@segment_app.command("update")
def update(
    ctx: typer.Context,
    segment_id: str,
    rules: RulesOption = None,
    rules_file: RulesFileOption = None,
    name: Annotated[str | None, typer.Option(help="New name.")] = None,
    description: Annotated[str | None, typer.Option(help="New description.")] = None,
    status: Annotated[str | None, typer.Option(help="ACTIVE or PAUSED.")] = None,
    if_version: Annotated[int | None, typer.Option("--if-version",
                                                   help="Only if the segment is still at this version.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Change a segment; its version goes up by one."""
    with segments(ctx) as (app, client):
        body: dict[str, Any] = {k: v for k, v in {"name": name, "description": description, "status": status,
                                                  "rules": read_rules(rules, rules_file)}.items() if v is not None}
        if not body:
            raise UsageError("nothing to change", hint="give --rules, --rules-file, --name, --description or --status")
        show_segment(app, client.update(segment_id, body, if_version), json_output)


@segment_app.command("delete")
def delete(ctx: typer.Context, segment_id: str) -> None:
    """Delete a segment; its members leave it."""
    with segments(ctx) as (app, client):
        client.delete(segment_id)
        app.console.print(f"deleted segment {segment_id}", markup=False)


@segment_app.command("preview")
def preview(ctx: typer.Context, rules: RulesOption = None, rules_file: RulesFileOption = None,
            sample: Annotated[int, typer.Option(help="How many matching user ids to show.")] = 10,
            json_output: JsonOption = False) -> None:
    """How many current profiles a rule tree matches, without creating a segment."""
    with segments(ctx) as (app, client):
        tree = read_rules(rules, rules_file)
        if tree is None:
            raise UsageError("give the rules to preview", hint="--rules '{...}' or --rules-file FILE")
        result = client.preview(tree, sample)
        if json_output:
            app.print_json(result)
            return
        app.console.print(f"{result['matching']:,} of {result['scanned']:,} profiles match")
        if result["sample"]:
            app.console.print("sample: " + ", ".join(result["sample"]), markup=False)
        for warning in result["warnings"]:
            app.err.print(f"warning: {warning}", markup=False)


@segment_app.command("members")
def members(ctx: typer.Context, segment_id: str,
            limit: Annotated[int, typer.Option(help="Page size.")] = 100,
            cursor: Annotated[str | None, typer.Option(help="nextCursor from the previous page.")] = None,
            add: Annotated[list[str] | None, typer.Option(help="Add a member (STATIC segments).")] = None,
            remove: Annotated[list[str] | None, typer.Option(help="Remove a member (STATIC segments).")] = None,
            json_output: JsonOption = False) -> None:
    """List a segment's members (or change a STATIC segment's with --add/--remove)."""
    with segments(ctx) as (app, client):
        if add or remove:
            client.change_members(segment_id, add or [], remove or [])
        page = client.members(segment_id, limit, cursor)
        if json_output:
            app.print_json(page)
            return
        table = Table(title=plain(f"members of {segment_id}"))
        for column in ("user", "since", "version", "source"):
            table.add_column(column)
        for m in page["items"]:
            add_row(table, m["userId"], m["enteredAt"], m["segmentVersion"], m["source"])
        app.console.print(table)
        if page["nextCursor"]:
            app.console.print(f"more: --cursor {page['nextCursor']}", markup=False)


class ExportFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"


@segment_app.command("export")
def export(
    ctx: typer.Context,
    segment_id: str,
    fmt: Annotated[ExportFormat, typer.Option("--format", help="csv (with a header row) or jsonl.")] = ExportFormat.CSV,
    traits: Annotated[str | None, typer.Option(help="Trait columns, comma-separated: plan,address.city.")] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="File to write; - or none: stdout.")] = None,
) -> None:
    """Every member of a segment, streamed: userId, enteredAt, segmentVersion, source, chosen traits.

    A file appears only once written whole (a failed export leaves none), with a progress bar on stderr.
    CSV cells that start with = + - @ get a leading apostrophe, so spreadsheets do not run them.
    """
    names = traits.split(",") if traits else []
    with segments(ctx) as (app, client), client.export_members(segment_id, fmt, names) as members:
        if output is None or output == "-":
            count = write_members(members, fmt, typer.get_binary_stream("stdout"))
            app.err.print(f"exported {count:,} members", markup=False)
            return
        with atomic_file(Path(output)) as out, Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=app.err) as progress:
            task = progress.add_task(escape(f"exporting {segment_id}"), total=members.total)
            count = write_members(members, fmt, out, lambda: progress.advance(task))
        app.console.print(f"exported {count:,} members to {output}", markup=False)


def write_members(members: MemberExport, fmt: ExportFormat, out: BinaryIO,
                  advance: Callable[[], None] = lambda: None) -> int:
    """Copy the export's lines to `out` as they arrive; returns how many members they held (CSV records,
    whose quoted cells may span lines, less the header; JSON lines one each)."""
    def copied() -> Iterator[str]:
        for line in members.lines:
            out.write(line)
            yield line.decode()

    rows: Iterator[Any] = csv.reader(copied()) if fmt is ExportFormat.CSV else copied()
    if fmt is ExportFormat.CSV:
        next(rows, None)  # the header
    count = 0
    for _ in rows:
        count += 1
        advance()
    return count


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A file that appears at `path` only once written whole: a temporary file beside it, renamed at the end."""
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:
        raise AmctlError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # as a file opened for writing would be, not mkstemp's 0600
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


@segment_app.command("stats")
def stats(ctx: typer.Context, segment_id: str, json_output: JsonOption = False) -> None:
    """Size, and how many entered and exited in the last hour and day."""
    with segments(ctx) as (app, client):
        result = client.stats(segment_id)
        if json_output:
            app.print_json(result)
            return
        table = Table(title=plain(f"segment {segment_id}"))
        for column in ("size", "entered 1h", "entered 24h", "exited 1h", "exited 24h"):
            table.add_column(column, justify="right")
        e, x = result["entered"], result["exited"]
        add_row(table, f"{result['size']:,}", e["lastHour"], e["lastDay"], x["lastHour"], x["lastDay"])
        app.console.print(table)


@segment_app.command("overlap")
def overlap(ctx: typer.Context,
            segment_ids: Annotated[list[str], typer.Argument(help="2 to 10 segment ids.", show_default=False)],
            json_output: JsonOption = False) -> None:
    """How many users the segments share: each one's size, the users in all of them, every pair."""
    with segments(ctx) as (app, client):
        result = client.overlap(segment_ids)
        if json_output:
            app.print_json(result)
            return
        names = {sid: client.get(sid)["name"] for sid in result["sizes"]}  # at most 10: tables read by name
        sizes = Table(title="segments")
        for column in ("segment", "id", "members"):
            sizes.add_column(column, justify="right" if column == "members" else "left")
        for segment_id, size in result["sizes"].items():
            add_row(sizes, names[segment_id], segment_id, f"{size:,}")
        app.console.print(sizes)
        pairs = Table(title="pairs")
        for column in ("a", "b", "in both"):
            pairs.add_column(column, justify="right" if column == "in both" else "left")
        for pair in result["pairs"]:
            add_row(pairs, names[pair["a"]], names[pair["b"]], f"{pair['intersection']:,}")
        app.console.print(pairs)
        app.console.print(f"in all {len(result['sizes'])}: {result['intersection']:,}", markup=False)


@segment_app.command("history")
def history(ctx: typer.Context, segment_id: str,
            since: Annotated[str | None, typer.Option("--from", help="ISO-8601 start; default: 24 hours before --to.")]
            = None,
            until: Annotated[str | None, typer.Option("--to", help="ISO-8601 end; default: now.")] = None,
            json_output: JsonOption = False) -> None:
    """Entries, exits and size per hour over a range of up to 31 days (sizes from the membership ledger)."""
    with segments(ctx) as (app, client):
        result = client.history(segment_id, since, until)
        if json_output:
            app.print_json(result)
            return
        name = client.get(segment_id)["name"]
        table = Table(title=plain(f"{name}, per hour"))
        table.add_column("hour (UTC)")
        for column in ("entered", "exited", "size"):
            table.add_column(column, justify="right")
        for point in result["points"]:
            add_row(table, point["at"], f"{point['entered']:,}", f"{point['exited']:,}", f"{point['size']:,}")
        app.console.print(table)


@segment_app.command("breakdown")
def breakdown(ctx: typer.Context, segment_id: str,
              trait: Annotated[str, typer.Option(help="A trait, or a dotted path into nested ones: address.city.",
                                                 show_default=False)],
              limit: Annotated[int, typer.Option(help="How many values to list (1 to 100).")] = 20,
              json_output: JsonOption = False) -> None:
    """The members counted by the value of one trait, the most common first, the rest as other and missing."""
    with segments(ctx) as (app, client):
        result = client.breakdown(segment_id, trait, limit)
        if json_output:
            app.print_json(result)
            return
        members = result["members"]
        name = client.get(segment_id)["name"]
        table = Table(title=plain(f"{name} ({members:,} members)"))
        table.add_column(trait)
        table.add_column("members", justify="right")
        table.add_column("share", justify="right")
        rows: list[tuple[str | Text, int]] = [(trait_text(v["value"]), v["count"]) for v in result["values"]]
        rest = [(Text("(other)", style="dim"), result["other"]), (Text("(missing)", style="dim"), result["missing"])]
        for label, count in [*rows, *rest]:
            add_row(table, label, f"{count:,}", f"{count / members:.1%}" if members else "-")
        app.console.print(table)


def trait_text(value: Any) -> str:
    """A trait value for a table cell: a string as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)
