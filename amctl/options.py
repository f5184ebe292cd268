"""Options shared by several commands, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

from amctl.settings import Target

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
TargetOption = Annotated[
    Target | None,
    typer.Option("--target", "-t", envvar="AMCTL_TARGET", help="Where the platform runs (env: AMCTL_TARGET)."),
]
