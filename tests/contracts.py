"""The published contracts of our topics (docs/contracts/), as validators the tests share."""

from __future__ import annotations

import json
from datetime import datetime
from functools import cache
from pathlib import Path

from jsonschema import Draft202012Validator, FormatChecker

CONTRACTS = Path(__file__).resolve().parent.parent / "docs" / "contracts"
MEMBERSHIP_V1 = CONTRACTS / "segment-membership.v1.schema.json"


def _date_time(value: object) -> bool:
    """A date-time's values (the schema's pattern holds its RFC 3339 shape): fromisoformat raises on 2026-13-01."""
    return not isinstance(value, str) or bool(datetime.fromisoformat(value))


def _formats() -> FormatChecker:
    """Draft 2020-12's format checks, `date-time` included: jsonschema checks it only when the optional
    rfc3339-validator package is installed."""
    formats = FormatChecker(Draft202012Validator.FORMAT_CHECKER.checkers)
    formats.checks("date-time", raises=ValueError)(_date_time)
    return formats


@cache
def membership_validator() -> Draft202012Validator:
    """segment-membership v1, checked as a schema first, with format checking on."""
    schema = json.loads(MEMBERSHIP_V1.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=_formats())
