"""The exception the local stack raises for failures a user can act on."""

from __future__ import annotations

from amctl.errors import AmctlError


class StackError(AmctlError):
    """An expected failure of the local stack, with a hint on what to do next (and a log tail, when a
    component failed to start)."""
