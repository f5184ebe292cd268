"""CI-friendly pass/fail criteria such as `p99<50ms` or `errors<0.1%`, checked against a load result."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from amctl.load.profile import LoadConfigError

THRESHOLD_BREACHED_EXIT = 99

_SPEC = re.compile(
    r"^\s*(?P<metric>[a-z0-9_]+)\s*(?P<op><=|>=|<|>|==)\s*(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>ms|us|s|%|/s)?\s*$"
)
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
}
_TIME_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, None: 1.0}
LATENCY_METRICS = ("p50", "p90", "p95", "p99", "p999", "max", "mean")
RATIO_METRICS = ("errors", "dropped")
PLAIN_METRICS = ("achieved_rate",)


@dataclass(frozen=True)
class Threshold:
    """One criterion; `value` is in milliseconds for latencies and a fraction for ratios."""

    text: str
    metric: str
    op: str
    value: float

    def check(self, figures: Mapping[str, float]) -> tuple[bool, float]:
        actual = figures[self.metric]
        return _OPS[self.op](actual, self.value), actual


def parse_threshold(text: str) -> Threshold:
    match = _SPEC.match(text)
    known = ", ".join((*LATENCY_METRICS, *RATIO_METRICS, *PLAIN_METRICS))
    if not match:
        raise LoadConfigError(
            f"--threshold '{text}': expected METRIC<VALUE[unit], e.g. 'p99<50ms' or 'errors<0.1%'"
        )
    metric, unit, value = match["metric"], match["unit"], float(match["value"])
    if metric in LATENCY_METRICS:
        if unit not in ("us", "ms", "s"):
            raise LoadConfigError(f"--threshold '{text}': latency needs a time unit (us, ms, s)")
        value *= _TIME_UNITS[unit]
    elif metric in RATIO_METRICS:
        if unit == "%":
            value /= 100
        elif unit is not None:
            raise LoadConfigError(f"--threshold '{text}': {metric} is a ratio: use % or a fraction")
    elif metric not in PLAIN_METRICS:
        raise LoadConfigError(f"--threshold '{text}': unknown metric '{metric}'; known: {known}")
    return Threshold(text=text.strip(), metric=metric, op=match["op"], value=value)
