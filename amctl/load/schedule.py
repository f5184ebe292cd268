"""Open-model arrival schedules: when each send is due, by the clock, whatever the responses do."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

from amctl.load.profile import LoadConfigError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """`500ms`, `10s`, `2m`, `1h`, or plain seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise LoadConfigError(f"'{text}' is not a duration; use e.g. 30s, 2m, 500ms")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class Stage:
    """Move linearly from the previous stage's rate to `rate` (per second) over `duration_s`."""

    rate: float
    duration_s: float


def parse_ramp(spec: str) -> list[Stage]:
    """`100:10s,1000:30s,1000:1m` — rate:duration pairs, like k6's ramping-arrival-rate stages."""
    stages = []
    for item in spec.split(","):
        rate, sep, duration = item.partition(":")
        try:
            stages.append(Stage(float(rate), parse_duration(duration)))
        except (ValueError, LoadConfigError):
            raise LoadConfigError(f"--ramp: '{item}' is not rate:duration (e.g. 500:30s)") from None
        if not sep or stages[-1].rate < 0:
            raise LoadConfigError(f"--ramp: '{item}' is not rate:duration (e.g. 500:30s)")
    return stages


class ArrivalSchedule:
    """Due times (seconds from start) of every send: constant within a stage, or a linear ramp."""

    def __init__(self, stages: list[Stage], start_rate: float | None = None) -> None:
        if not stages or any(s.duration_s <= 0 for s in stages):
            raise LoadConfigError("a load needs a positive duration")
        self.stages = stages
        self.start_rate = stages[0].rate if start_rate is None else start_rate

    @property
    def duration_s(self) -> float:
        return sum(s.duration_s for s in self.stages)

    def expected_sends(self) -> int:
        total, previous = 0.0, self.start_rate
        for stage in self.stages:
            total += (previous + stage.rate) / 2 * stage.duration_s
            previous = stage.rate
        return round(total)

    def due_times(self) -> Iterator[float]:
        """Send i is due when the integral of the rate reaches i: send 0 at t=0, counts match exactly."""
        total = self.expected_sends()
        offset, previous, done, i = 0.0, self.start_rate, 0.0, 0
        for stage in self.stages:
            r0, r1, d = previous, stage.rate, stage.duration_s
            area = (r0 + r1) / 2 * d
            slope = (r1 - r0) / d
            while i < total and i - done < area - 1e-9:
                owed = i - done
                if abs(slope) < 1e-12:
                    t = owed / r0
                else:  # solve r0*t + slope*t^2/2 = owed
                    t = (-r0 + math.sqrt(max(r0 * r0 + 2 * slope * owed, 0.0))) / slope
                yield offset + min(max(t, 0.0), d)
                i += 1
            done += area
            offset += d
            previous = r1
