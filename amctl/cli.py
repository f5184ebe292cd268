"""`amctl`: one Typer app; each command group lives in its own module under amctl/commands.

Every expected failure ends here: `AmctlCommand.main` catches each AmctlError (and click's own usage
errors) once and prints it as one `error:` line, the hint below it, then exits with its code.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from amctl import __version__
from amctl.commands import (
    bench,
    campaign,
    destination,
    events,
    k8s,
    scenario,
    segment,
    smoke,
    stack,
    suppression,
    top,
    user,
)
from amctl.console import print_error, stderr_console
from amctl.context import AppContext
from amctl.errors import AmctlError, UsageError
from amctl.settings import AmctlSettings, Target


class AmctlCommand(TyperGroup):
    """The root command, as `amctl` and CliRunner run it."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False,
                                  windows_expand_args=windows_expand_args, **extra)
            code = result if isinstance(result, int) else 0  # typer.Exit(code) comes back as its code
        except AmctlError as exc:
            print_error(stderr_console(), exc)
            code = exc.exit_code
        except typer.TyperException as exc:  # click's usage errors (an unknown option, a value of the wrong type)
            code = exc.exit_code
            if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
                command = getattr(getattr(exc, "ctx", None), "command_path", None)  # usage errors know theirs
                hint = f"see: {command} --help" if command else ""
                print_error(stderr_console(), AmctlError(exc.format_message(), hint=hint))
        except typer.Abort:
            stderr_console().print("aborted")
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=AmctlCommand,
    name="amctl",
    help="Run, drive and measure Audience Manager: a real-time audience segmentation platform.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every command
)
stack.register(app)
k8s.register(app)
bench.register(app)
smoke.register(app)
top.register(app)
app.add_typer(campaign.app, name="campaign")
app.add_typer(destination.app, name="destination")
app.add_typer(events.app, name="events")
app.add_typer(scenario.app, name="scenario")
app.add_typer(segment.segment_app, name="segment")
app.add_typer(suppression.app, name="suppression")
app.add_typer(user.app, name="user")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"amctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    target: Annotated[
        Target,
        typer.Option("--target", "-t", envvar="AMCTL_TARGET", help="Where the platform runs (env: AMCTL_TARGET)."),
    ] = Target.LOCAL,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    try:
        settings = AmctlSettings(target=target)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}",
                         hint="settings come from AMCTL_* environment variables") from None
    ctx.obj = AppContext(settings=settings)


def main() -> None:
    """The `amctl` executable."""
    app()
