"""The one exception the local stack raises for failures a user can act on."""

from __future__ import annotations


class StackError(RuntimeError):
    """An expected failure of the local stack, with a hint on what to do next."""

    def __init__(self, message: str, hint: str = "", log_tail: list[str] | None = None) -> None:
        super().__init__(message)
        self.hint = hint
        self.log_tail = log_tail or []
