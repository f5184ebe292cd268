"""`amctl`: one Typer app; each command group lives in its own module under amctl/commands."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError

from amctl import __version__
from amctl.commands import bench, campaign, events, k8s, scenario, segment, smoke, stack, top
from amctl.context import AppContext
from amctl.settings import AmctlSettings, Target

app = typer.Typer(
    name="amctl",
    help="Run, drive and measure Audience Manager: a real-time audience segmentation platform.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
stack.register(app)
k8s.register(app)
bench.register(app)
smoke.register(app)
top.register(app)
app.add_typer(campaign.app, name="campaign")
app.add_typer(events.app, name="events")
app.add_typer(scenario.app, name="scenario")
app.add_typer(segment.segment_app, name="segment")
app.add_typer(segment.user_app, name="user")


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
        typer.echo(f"error: invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}", err=True)
        raise typer.Exit(2) from None
    ctx.obj = AppContext(settings=settings)


def main() -> None:
    app()
