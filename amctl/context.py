"""The object every command receives through `ctx.obj`: settings, target and consoles."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import typer
from rich.console import Console

from amctl.client import ServiceClient
from amctl.console import stderr_console, stdout_console
from amctl.errors import AmctlError
from amctl.settings import AmctlSettings, Target

C = TypeVar("C", bound=ServiceClient)


@dataclass
class AppContext:
    settings: AmctlSettings
    console: Console = field(default_factory=stdout_console)
    # progress, warnings and errors go to stderr so stdout stays clean for --json
    err: Console = field(default_factory=stderr_console)

    @property
    def target(self) -> Target:
        return self.settings.target

    def print_json(self, data: Any) -> None:
        """Machine-readable output: plain JSON on stdout, nothing else."""
        typer.echo(json.dumps(data, indent=2, default=str))

    def require(self, target: Target, message: str, hint: str = "") -> None:
        """Refuse a command (or option) that has no meaning on the current target."""
        if self.target is not target:
            raise AmctlError(message, hint=hint)


@contextmanager
def service_call(ctx: typer.Context, factory: Callable[[AmctlSettings], C]) -> Iterator[tuple[AppContext, C]]:
    """A service client for one command, closed when it ends (its ApiErrors reach `amctl.cli`)."""
    app = get_context(ctx)
    client = factory(app.settings)
    try:
        yield app, client
    finally:
        client.close()


def get_context(ctx: typer.Context, target: Target | None = None) -> AppContext:
    """The command's context; `target` is a command's own --target, which wins over the global one."""
    obj = ctx.find_object(AppContext)
    if obj is None:  # invoked without the root callback (should not happen)
        raise RuntimeError("amctl context missing")
    if target is not None and target is not obj.settings.target:
        obj.settings = obj.settings.model_copy(update={"target": target})
    return obj
