"""The one exception tree of amctl: every failure a user can act on is an `AmctlError`.

`amctl.cli` catches it once and prints it as one `error:` line (the hint on the next), never as a
traceback; library code raises it and commands let it pass.
"""

from __future__ import annotations

from collections.abc import Sequence


class AmctlError(Exception):
    """An expected failure, said in one line.

    `hint` says what to do next; `details` are lines that explain it (every problem a service found,
    every check that failed), printed before the error line; `log_tail` holds the last lines of a
    component's log. `exit_code` is the exit status of the command that met it.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str = "", details: Sequence[str] = (),
                 log_tail: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = list(details)
        self.log_tail = list(log_tail)


class UsageError(AmctlError):
    """Options that do not go together, a missing one, or a value that cannot be parsed (exit status 2, as
    for click's own usage errors)."""

    exit_code = 2
