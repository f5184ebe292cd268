"""The object every command receives through `ctx.obj`: settings, target and consoles."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

from amctl.client import ApiError, ServiceClient
from amctl.settings import AmctlSettings, Target

C = TypeVar("C", bound=ServiceClient)


@dataclass
class AppContext:
    settings: AmctlSettings
    console: Console = field(default_factory=Console)
    # progress, warnings and errors go to stderr so stdout stays clean for --json
    err: Console = field(default_factory=lambda: Console(stderr=True))

    @property
    def target(self) -> Target:
        return self.settings.target

    def print_json(self, data: Any) -> None:
        """Machine-readable output: plain JSON on stdout, nothing else."""
        typer.echo(json.dumps(data, indent=2, default=str))

    def fail(self, message: str, hint: str | None = None, code: int = 1, details: list[str] | None = None) -> NoReturn:
        """One clear line saying what failed (after any `details`, one per line), then exit with `code`."""
        for line in details or []:
            self.err.print(f"  {line}", markup=False, highlight=False)
        self.err.print(f"[bold red]error:[/] {message}", highlight=False)
        if hint:
            self.err.print(f"  {hint}", highlight=False)
        raise typer.Exit(code)

    def fail_api(self, exc: ApiError) -> NoReturn:
        """A failed service call: its details, its one-line summary, and what to do for 401/403."""
        self.fail(str(exc), hint=exc.hint, details=exc.details)


@contextmanager
def service_call(ctx: typer.Context, factory: Callable[[AmctlSettings], C]) -> Iterator[tuple[AppContext, C]]:
    """A service client for one command; API errors end the command with their message (and details)."""
    app = get_context(ctx)
    client = factory(app.settings)
    try:
        yield app, client
    except ApiError as exc:
        app.fail_api(exc)
    finally:
        client.close()


def get_context(ctx: typer.Context) -> AppContext:
    obj = ctx.find_object(AppContext)
    if obj is None:  # invoked without the root callback (should not happen)
        raise RuntimeError("amctl context missing")
    return obj
