"""The soak: a steady event rate over a fixed population for a long time, read every interval.

Pure parts: the options (durations), what one reading of the stack holds, the sample of one interval
between two readings, memory growth over the samples, acknowledged events the rule job never applied,
and the report. `amctl.load.soak_measure.run_soak` takes the readings from a running stack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from amctl.load.profile import LoadConfigError
from amctl.load.schedule import parse_duration
from amctl.local.broker import BrokerSize
from amctl.monitor import quantile

DEFAULT_RATE = 500
DEFAULT_USERS = 50_000
DEFAULT_EVERY_S = 60.0
BROKER = "kafka"  # the broker's component name


def parse_option_duration(text: str, option: str) -> float:
    """Seconds of a duration option such as `--soak 10m` (`90s`, `1h`, `500ms`, plain seconds); a value that
    is not one, or not above zero, is a usage error naming the option."""
    try:
        seconds = parse_duration(text)
    except LoadConfigError:
        raise LoadConfigError(f"{option}: '{text}' is not a duration; use e.g. 90s, 10m or 1h") from None
    if seconds <= 0:
        raise LoadConfigError(f"{option}: the duration must be more than zero, not '{text}'")
    return seconds


@dataclass(frozen=True)
class SoakConfig:
    """`rate` events/s (one per request) over `users` users for `duration_s`, read every `every_s`."""

    duration_s: float
    rate: float = DEFAULT_RATE
    users: int = DEFAULT_USERS
    every_s: float = DEFAULT_EVERY_S
    segments: int = 20  # active while it runs, as on the end-to-end ladder

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise LoadConfigError("--rate must be more than zero")
        if self.users < 1:
            raise LoadConfigError("--users must be at least 1")
        if self.every_s > self.duration_s:
            raise LoadConfigError(f"--every ({self.every_s:g} s) must not be longer than --soak "
                                  f"({self.duration_s:g} s)")


@dataclass(frozen=True)
class Reading:
    """The stack at one moment of the soak; every count is cumulative since the load started."""

    at_s: float  # seconds since the load started
    rss_bytes: Mapping[str, int]  # per component, children included
    acked: int  # events answered 2xx
    refused: int  # events answered with an error, or not at all
    dropped: int  # sends due while the generator's concurrency was used up
    applied: float  # events the rule job applied (its eventsProcessed counter)
    assignments: dict[float, float]  # the cumulative event → membership written histogram, by bound
    broker: BrokerSize | None
    pss_bytes: Mapping[str, int] = field(default_factory=dict)  # per component: shared pages split, not repeated


def _mib(value: float) -> float:
    return round(value / 2**20, 1)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def sample(before: Reading, after: Reading) -> dict[str, Any]:
    """One interval between two readings, as the report shows it: its counts and end-to-end latency, the
    memory at its end."""
    seconds = after.at_s - before.at_s
    if seconds <= 0:
        raise ValueError("a reading must come after the one before it")
    acked = after.acked - before.acked
    records = after.broker.records if after.broker is not None else None
    store = after.broker.store if after.broker is not None else None
    p99 = quantile(before.assignments, after.assignments, 0.99)
    last_bound = max((b for b in after.assignments if b != float("inf")), default=None)
    return {
        "at_s": round(after.at_s, 1), "seconds": round(seconds, 1),
        "acked": acked, "refused": after.refused - before.refused, "dropped": after.dropped - before.dropped,
        "acked_per_s": round(acked / seconds, 1), "applied": round(after.applied - before.applied),
        "assignments": round(after.assignments.get(float("inf"), 0.0) - before.assignments.get(float("inf"), 0.0)),
        "p50_ms": _ms(quantile(before.assignments, after.assignments, 0.5)),
        "p99_ms": _ms(p99),
        # more than 1% took longer than the histogram's last bound: p99 is at least this, not this
        "p99_past_last_bound": p99 is not None and last_bound is not None and p99 >= last_bound,
        "rss_mib": {name: _mib(rss) for name, rss in after.rss_bytes.items()},
        "total_rss_mib": _mib(sum(after.rss_bytes.values())),
        "pss_mib": {name: _mib(pss) for name, pss in after.pss_bytes.items()},
        "total_pss_mib": _mib(sum(after.pss_bytes.values())),
        "broker_records_at_least": records.at_least if records is not None else None,
        # what the broker's S3 server still holds, and the records it dropped once every reader had them
        "broker_held_mib": _mib(store.held_bytes) if store is not None else None,
        "broker_records_dropped": store.trimmed_records if store is not None else None,
    }


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float | None:
    """The least-squares slope of (seconds, value) points, per minute; None with fewer than two times."""
    if len({t for t, _ in points}) < 2:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    covariance = sum((t - mean_t) * (v - mean_v) for t, v in points)
    variance = sum((t - mean_t) ** 2 for t, _ in points)
    return covariance / variance * 60


def memory_growth(start: Mapping[str, float], samples: Sequence[Mapping[str, Any]],
                  measure: str = "rss") -> dict[str, dict[str, Any]]:
    """Per component and in total (MiB of the samples' `rss` or `pss`): at the start (before the load), at the
    end, the growth between them, and the growth per minute fitted over the samples (under load: the step
    from idle is left out)."""
    names = [*start, *(n for s in samples for n in s[f"{measure}_mib"] if n not in start)]
    growth: dict[str, dict[str, Any]] = {}
    for name in [*dict.fromkeys(names), "total"]:
        def mib(s: Mapping[str, Any], n: str = name) -> float | None:
            value = s[f"total_{measure}_mib"] if n == "total" else s[f"{measure}_mib"].get(n)
            return float(value) if value is not None else None

        first = round(sum(start.values()), 1) if name == "total" else start.get(name)
        last = mib(samples[-1]) if samples else None
        points = [(float(s["at_s"]), v) for s in samples if (v := mib(s)) is not None]
        per_minute = slope_per_minute(points)
        growth[name] = {"start": first, "end": last,
                        "growth": round(last - first, 1) if first is not None and last is not None else None,
                        "per_minute": round(per_minute, 2) if per_minute is not None else None}
    return growth


@dataclass(frozen=True)
class Losses:
    """Acknowledged events the rule job did not apply, found user by user (an event refused to the client
    but stored anyway cannot hide a lost one of another user)."""

    lost: int  # acknowledged, not applied
    unacknowledged_applied: int  # applied beyond what was acknowledged: refused answers of stored events
    users_short: int  # users with fewer events applied than acknowledged


def losses(acked_by_user: Mapping[str, int], applied_by_user: Mapping[str, int]) -> Losses:
    short = {user: n - applied_by_user.get(user, 0) for user, n in acked_by_user.items()
             if n > applied_by_user.get(user, 0)}
    extra = sum(max(n - acked_by_user.get(user, 0), 0) for user, n in applied_by_user.items())
    return Losses(sum(short.values()), extra, len(short))


def report(config: SoakConfig, start: Reading, readings: Sequence[Reading], found: Losses, settle_s: float,
           settled: bool) -> dict[str, Any]:
    """The soak's figures: its settings, every sample, memory growth per component, the broker's size, and
    acknowledged events lost (checked against the profiles the job wrote, once it settled)."""
    samples = [sample(a, b) for a, b in zip([start, *readings], readings, strict=False)]
    end = readings[-1] if readings else start
    p99s = [s["p99_ms"] for s in samples if s["p99_ms"] is not None]
    broker_start, broker_end = start.broker, end.broker
    broker: dict[str, Any] = {"start": broker_start.as_json() if broker_start else None,
                              "end": broker_end.as_json() if broker_end else None}
    if broker_start is not None and broker_end is not None:
        # the broker and its S3 server together: the records live in the server
        grown = (broker_end.rss_bytes + broker_end.store_rss_bytes) - (broker_start.rss_bytes
                                                                       + broker_start.store_rss_bytes)
        broker["rss_growth_mib"] = _mib(grown)
        broker["rss_bytes_per_acked_event"] = round(grown / end.acked) if end.acked else None
    return {
        "duration_s": config.duration_s, "rate": config.rate, "users": config.users, "every_s": config.every_s,
        "segments": config.segments,
        "acked": end.acked, "refused": end.refused, "dropped": end.dropped,
        "achieved_rate": round(end.acked / end.at_s, 1) if end.at_s > 0 else None,
        "lost": found.lost, "users_short": found.users_short, "unacknowledged_applied": found.unacknowledged_applied,
        "settle_s": round(settle_s, 1), "settled": settled,
        "p99_ms_max": max(p99s, default=None),
        "rss_mib": memory_growth({n: _mib(v) for n, v in start.rss_bytes.items()}, samples),
        "pss_mib": memory_growth({n: _mib(v) for n, v in start.pss_bytes.items()}, samples, "pss"),
        "broker": broker,
        "samples": samples,
    }
