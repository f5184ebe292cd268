"""Expectations on JSON responses: `path` lookups such as `segments[*].segmentId` and checks on them."""

from __future__ import annotations

import re
from typing import Any

from amctl.errors import AmctlError

_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+|\*)\]")
_MISSING = object()


class ExpectationFailed(AmctlError):
    """An expectation did not hold; the message says what was expected and what was seen."""


def lookup(document: Any, path: str) -> Any:
    """Resolve a dotted path with `[n]` and `[*]` (which maps over a list) in a JSON document."""
    values: list[Any] = [document]
    spread = False
    for name, index in _TOKEN.findall(path):
        next_values: list[Any] = []
        for value in values:
            if name:
                if isinstance(value, dict) and name in value:
                    next_values.append(value[name])
            elif index == "*":
                spread = True
                if isinstance(value, list):
                    next_values.extend(value)
            elif isinstance(value, list) and int(index) < len(value):
                next_values.append(value[int(index)])
        values = next_values
    if spread:
        return values
    return values[0] if values else _MISSING


def _describe(value: Any) -> str:
    return "<missing>" if value is _MISSING else repr(value)


def check(document: Any, expectation: dict[str, Any]) -> None:
    """One expectation: `{path: P, <op>: value}` with op in equals, contains, not_contains, length,
    gte, lte, exists."""
    path = expectation.get("path", "")
    actual = lookup(document, path) if path else document
    where = f"{path or 'response'}"
    for op, expected in expectation.items():
        if op == "path":
            continue
        if op == "equals" and actual != expected:
            raise ExpectationFailed(f"{where}: expected {expected!r}, got {_describe(actual)}")
        if op == "contains" and (actual is _MISSING or expected not in actual):
            raise ExpectationFailed(f"{where}: expected to contain {expected!r}, got {_describe(actual)}")
        if op == "not_contains" and actual is not _MISSING and expected in actual:
            raise ExpectationFailed(f"{where}: expected not to contain {expected!r}, got {_describe(actual)}")
        if op == "length" and (actual is _MISSING or len(actual) != expected):
            raise ExpectationFailed(f"{where}: expected length {expected}, got {_describe(actual)}")
        if op == "gte" and (actual is _MISSING or actual < expected):
            raise ExpectationFailed(f"{where}: expected ≥ {expected!r}, got {_describe(actual)}")
        if op == "lte" and (actual is _MISSING or actual > expected):
            raise ExpectationFailed(f"{where}: expected ≤ {expected!r}, got {_describe(actual)}")
        if op == "exists" and (actual is not _MISSING) != bool(expected):
            raise ExpectationFailed(f"{where}: expected {'present' if expected else 'absent'}, got {_describe(actual)}")
        if op not in ("equals", "contains", "not_contains", "length", "gte", "lte", "exists"):
            raise ExpectationFailed(f"{where}: unknown check '{op}'")
