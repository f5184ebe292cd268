"""Timestamps and ISO-8601 durations, parsed once and compared as aware UTC datetimes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache

_DURATION = re.compile(
    r"^(?P<sign>-)?P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> timedelta:
    """`P7D`, `PT3S`, `P1W`, `-P30D` (negative) → timedelta; ValueError otherwise."""
    match = _DURATION.match(text)
    if not match or text.rstrip("-") in ("P", "PT") or text.endswith("T"):
        raise ValueError(f"'{text}' is not an ISO-8601 duration such as P7D or PT30M")
    parts = {k: float(v) for k, v in match.groupdict().items() if v and k != "sign"}
    if not parts:
        raise ValueError(f"'{text}' is not an ISO-8601 duration such as P7D or PT30M")
    delta = timedelta(**parts)
    return -delta if match["sign"] else delta


def format_duration(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    text = f"{sign}P{int(days)}D" if days else f"{sign}P"
    if rest or not days:
        text += f"T{rest:g}S"
    return text


def parse_timestamp(value: str) -> datetime:
    """ISO-8601 with offset or `Z`; a naive timestamp is taken as UTC."""
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


@lru_cache(maxsize=256)  # one record's changes and snapshot repeat the same few instants (now, its receive time)
def format_timestamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def utcnow() -> datetime:
    return datetime.now(UTC)
