"""The end-to-end ladder: step the event rate up until event → membership written stops keeping p99 under 1 s.

Pure parts: the plan of steps, the verdict on one step (and when to stop climbing), the climb itself given
a function that runs a step, and the report. `amctl.load.measures.measure_assignment_latency` runs the
steps against the stack.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from amctl.load.cpu import CpuUse

LADDER_RATES = (500, 1000, 2000, 3000, 5000, 8000, 10_000)
QUICK_LADDER_RATES = (500, 2000, 3000, 5000, 10_000)  # --quick leaves out 1,000 and 8,000
SINGLE_UP_TO = 2000  # events/s sent one per request; above it, in batches
BATCH_SIZE = 100
P99_BOUND_MS = 1000.0
# Well over the bound: a bucket bound of the assignment histogram, so over 1% of assignments took longer.
CLEARLY_OVER_MS = 2500.0
PASS_SHARE = 0.95  # of the target rate achieved, for a step to count as sustained
STOP_SHARE = 0.80  # under this share of the target the stack (or the generator) cannot keep up at all
# failed requests, as a share of those answered (drops already lower the achieved rate: a short stall of the
# API drops some sends without the rate being far under the target)
STOP_ERRORS = 0.05


@dataclass(frozen=True)
class Step:
    """One rung: `rate` events/s for `seconds`, sent `batch_size` events per request."""

    rate: int
    batch_size: int
    seconds: float


def plan(rates: Sequence[int], seconds: float, single_up_to: int = SINGLE_UP_TO,
         batch_size: int = BATCH_SIZE) -> list[Step]:
    """The steps in ascending rate: single events up to `single_up_to` events/s, batches above."""
    return [Step(rate, 1 if rate <= single_up_to else batch_size, seconds) for rate in sorted(rates)]


def highest_bucket(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The upper bound of the highest histogram bucket that gained observations between two cumulative
    histograms (infinity when one fell past the last bound): the most a histogram can say of the maximum."""
    gained = [bound for bound in sorted(after) if after[bound] > before.get(bound, 0.0)]
    if not gained:
        return None
    first_full = after[gained[-1]] - before.get(gained[-1], 0.0)  # every bucket from here up holds them all
    return next(bound for bound in gained if after[bound] - before.get(bound, 0.0) == first_full)


@dataclass(frozen=True)
class StepResult:
    """What one step measured: the load as sent, the assignments it caused, the CPU while it ran."""

    step: Step
    achieved_rate: float
    sent: int  # requests
    dropped: int  # requests due while the generator's concurrency was used up
    errors: int  # requests answered with an error or not at all
    late: int  # requests the generator started more than 5 ms after they were due
    assignments: int
    p50_ms: float | None
    p99_ms: float | None
    # upper bound of the highest histogram bucket an assignment fell in; None past the last bound (10 s)
    max_ms: float | None
    drain_s: float
    drained: bool  # the backlog was worked off before the drain's timeout
    cpu: CpuUse


class Verdict(StrEnum):
    """What one step showed, and so whether the climb goes on."""

    PASSED = "passed"  # p99 under 1 s at the target rate, nothing dropped or failed
    MISSED = "missed"  # not sustained, but close enough that the next step may still tell something
    # the events could not be sent at the rate (far under it, or failed requests): the request path is the
    # ceiling, not the rule job, so one-event requests give way to batches
    UNDELIVERED = "undelivered"
    STOPPED = "stopped"  # memberships clearly late or not written: climbing higher would only pile up backlog


def judge(result: StepResult, generator: str = "load-generator") -> tuple[Verdict, str]:
    """Whether a step sustained its rate with p99 under 1 s, and why not (see `climb` for what follows)."""
    target, achieved, p99 = result.step.rate, result.achieved_rate, result.p99_ms
    failed = result.errors / result.sent if result.sent else 1.0
    if not result.drained:
        return Verdict.STOPPED, f"the backlog did not drain within {result.drain_s:.0f} s"
    if p99 is None:
        return Verdict.STOPPED, "no membership was written"
    if p99 > CLEARLY_OVER_MS:
        return Verdict.STOPPED, f"p99 {p99:.0f} ms, well over 1 s"
    if achieved < STOP_SHARE * target:
        own = result.cpu.by_component.get(generator)
        mine = f" (the load generator used {own:.2f} cores)" if own is not None else ""
        return Verdict.UNDELIVERED, f"achieved {achieved:.0f} of {target} ev/s{mine}"
    if failed > STOP_ERRORS:
        return Verdict.UNDELIVERED, f"{failed:.1%} of requests failed"
    if p99 >= P99_BOUND_MS:
        return Verdict.MISSED, f"p99 {p99:.0f} ms"
    if achieved < PASS_SHARE * target:
        return Verdict.MISSED, f"achieved {achieved:.0f} of {target} ev/s"
    if result.dropped or result.errors:
        return Verdict.MISSED, f"{result.dropped} dropped, {result.errors} errors"
    return Verdict.PASSED, f"p99 {p99:.0f} ms"


@dataclass(frozen=True)
class Rung:
    """A step that ran, with its verdict and the reason in a few words."""

    result: StepResult
    verdict: Verdict
    reason: str


def climb(steps: Sequence[Step], run: Callable[[Step], StepResult]) -> list[Rung]:
    """Run the steps in order until one is STOPPED, or UNDELIVERED in batches (that one included); an
    UNDELIVERED one-event step skips the other one-event steps and goes on with the batched ones."""
    rungs: list[Rung] = []
    for step in steps:
        if step.batch_size == 1 and any(r.verdict is Verdict.UNDELIVERED for r in rungs):
            continue
        result = run(step)
        rungs.append(Rung(result, *judge(result)))
        if rungs[-1].verdict is Verdict.STOPPED or (rungs[-1].verdict is Verdict.UNDELIVERED and step.batch_size > 1):
            break
    return rungs


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def step_figures(rung: Rung) -> dict[str, Any]:
    """One step as the report shows it."""
    r = rung.result
    return {"target_rate": r.step.rate, "batch_size": r.step.batch_size, "seconds": r.step.seconds,
            "achieved_rate": round(r.achieved_rate, 1), "dropped": r.dropped, "errors": r.errors, "late": r.late,
            "assignments": r.assignments, "p50_ms": _round(r.p50_ms), "p99_ms": _round(r.p99_ms),
            "max_ms": _round(r.max_ms), "drain_s_after_load": round(r.drain_s, 1),
            "verdict": str(rung.verdict), "reason": rung.reason, "cpu": r.cpu.as_json()}


@dataclass(frozen=True)
class Setup:
    """What came before the first step: the segments created, their backfill, the stack's CPU at rest."""

    segments: int
    backfill_drain_s: float
    idle: CpuUse


def report(setup: Setup, rungs: Sequence[Rung], planned: Sequence[Step]) -> dict[str, Any]:
    """The stage's figures: the keys it always had first (the single-event steps by rate in `by_rate`, the
    batched ones in `sustained`, the highest rate sustained with p99 under 1 s), then every step of the
    ladder, where it stopped and what it did not run, the stack's CPU at rest and at the highest rate."""
    passed = [rung for rung in rungs if rung.verdict is Verdict.PASSED]
    best = max(passed, key=lambda rung: rung.result.step.rate, default=None)
    last = rungs[-1] if rungs else None
    ran = {rung.result.step.rate for rung in rungs}
    legacy = ("achieved_rate", "dropped", "errors", "drain_s_after_load", "assignments", "p50_ms", "p99_ms")

    def by(single: bool) -> dict[str, Any]:
        return {str(rung.result.step.rate): {k: step_figures(rung)[k] for k in legacy} for rung in rungs
                if (rung.result.step.batch_size == 1) == single}

    return {
        "segments": setup.segments,
        "backfill_drain_s": round(setup.backfill_drain_s, 1),
        "by_rate": by(single=True),
        "sustained": by(single=False),
        "max_rate_with_p99_under_1s": best.result.step.rate if best is not None else None,
        "max_single_event_rate_with_p99_under_1s": max(
            (r.result.step.rate for r in passed if r.result.step.batch_size == 1), default=None),
        "ladder": [step_figures(rung) for rung in rungs],
        "ladder_stopped": ({"at_rate": last.result.step.rate, "reason": last.reason}
                           if last is not None and last.verdict in (Verdict.STOPPED, Verdict.UNDELIVERED) else None),
        "ladder_not_run": [step.rate for step in planned if step.rate not in ran],
        "cpu_idle": setup.idle.as_json(),
        "cpu_at_max_rate": best.result.cpu.as_json() if best is not None else None,
    }
