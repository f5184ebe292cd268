"""How amctl prints: its two consoles, text that is never read as markup, and the one way an error looks."""

from __future__ import annotations

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from amctl.errors import AmctlError


def stdout_console() -> Console:
    return Console()


def stderr_console() -> Console:
    """Progress, warnings and errors; unwrapped when not a terminal (CI logs), so one error is one line."""
    console = Console(stderr=True)
    console.soft_wrap = not console.is_terminal
    return console


def plain(value: object) -> Text:
    """`value` as it is: server and user text (a segment named `[/x]`) is never read as rich markup."""
    if isinstance(value, Text):
        return value
    return Text("" if value is None else str(value))


def add_row(table: Table, *cells: object, style: str = "") -> None:
    """A table row whose strings are shown as they are (rich renderables such as styled Text pass through)."""
    table.add_row(*(c if isinstance(c, Text | Table) else plain(c) for c in cells), style=style)


def print_error(console: Console, exc: AmctlError) -> None:
    """The log tail and details (if any), then `error: <message>` and the hint on the next line."""
    first, *more = exc.message.splitlines() or [""]
    if exc.log_tail:
        console.rule("last log lines", style="red")
        for line in exc.log_tail:
            console.print(line, markup=False, highlight=False)
        console.rule(style="red")
    for line in [*exc.details, *more]:
        console.print(f"  {line}", markup=False, highlight=False)
    message: RenderableType = Text.assemble(("error:", "bold red"), " ", first)
    console.print(message, highlight=False)
    if exc.hint:
        console.print(f"  {exc.hint}", markup=False, highlight=False)
