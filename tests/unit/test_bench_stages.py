"""`amctl bench`'s stages: each a plain function run as `python -m amctl.measure`, with a typed result, and
the bench stack's rate-limit override given to its services, not to amctl's own environment; the end-to-end
ladder's plan, verdicts and report, and the CPU accounting it reports, measured over a real process tree."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer

from amctl.benchmarks import BENCH_SERVICE_ENV, BenchReport, Measurement, MeasurementResult, run_measurement
from amctl.commands.bench import measurements, selected
from amctl.load import backfill_measure, cpu, email_measure, ladder
from amctl.load.cpu import CpuUse, ProcStat
from amctl.load.identity_measure import Outcome, is_merged, make_visitors, summarize
from amctl.load.ladder import Rung, Step, StepResult, Verdict
from amctl.load.measures import measure_generator_accuracy
from amctl.local.stack import LocalStack
from amctl.settings import AmctlSettings

pytestmark = pytest.mark.unit


def test_a_stage_is_a_function_run_in_a_process_of_its_own() -> None:
    result = run_measurement(Measurement("rules", "server.domain.bench:measure_rule_evaluations",
                                         {"seconds": 0.2, "segments": 2}, needs_stack=False), dict(os.environ))
    assert result.error is None and result.name == "rules"
    assert result.figures["segments"] == 2 and result.figures["rule_evaluations_per_s"] > 0


def test_a_failing_stage_is_that_stage_s_error_only() -> None:
    missing = run_measurement(Measurement("gone", "amctl.no_such_module:measure"), dict(os.environ))
    assert missing.figures == {} and missing.error is not None
    assert missing.error.startswith("amctl.no_such_module:measure failed: ModuleNotFoundError")
    forever = Measurement("slow", "http.server:test", {"port": 0, "bind": "127.0.0.1"}, timeout_s=0.5)  # serves on
    slow = run_measurement(forever, dict(os.environ))
    assert slow.error == "did not finish within 0.5 s"


def test_the_report_keeps_its_order_and_says_failures_per_stage() -> None:
    report = BenchReport({"cpus": 2}, idle=[MeasurementResult("a", {"x": 1})], cold_start_s=9.5,
                         stack_memory_mib={"total": 1.0}, on_stack=[MeasurementResult("b", {}, "boom")])
    assert list(report.as_json()) == ["machine", "a", "cold_start_s", "stack_memory_mib", "b"]
    assert report.as_json()["b"] == {"error": "boom"}


def test_the_rate_limit_override_reaches_the_services_not_amctl(tmp_path: Path) -> None:
    stack = LocalStack(AmctlSettings(state_dir=tmp_path), extra_env=BENCH_SERVICE_ENV)
    for name in ("ingestion-api", "segment-api", "rule-engine"):
        assert stack.component(name).env["AM_RATE_LIMIT_PER_S"] == BENCH_SERVICE_ENV["AM_RATE_LIMIT_PER_S"]
    assert "AM_RATE_LIMIT_PER_S" not in LocalStack(AmctlSettings(state_dir=tmp_path)).service_env()


def test_the_identify_stage_counts_only_merges_it_saw_and_verified() -> None:
    visitors = make_visitors("r1", 3)
    assert len({v.anonymous_id for v in visitors}) == len({v.amount for v in visitors}) == 3
    first = visitors[0]
    merged = {"userId": first.user_id, "anonymous": False, "aliases": [first.anonymous_id],
              "totalSpent": first.amount, "purchaseCount": 1}
    assert is_merged(merged, first)
    assert not is_merged({**merged, "totalSpent": first.amount * 2}, first)  # counted twice
    assert not is_merged({**merged, "aliases": []}, first)
    assert not is_merged({**merged, "anonymous": True}, first)
    assert not is_merged(merged, visitors[1])
    outcomes = [Outcome(0.050, True), Outcome(0.200, True), Outcome(0.100, False), Outcome(None, False)]
    assert summarize(outcomes, 20.0) == {"visitors": 4, "rate": 20.0, "merged": 3, "verified": 2,
                                         "p50_ms": 100.0, "p99_ms": 200.0, "max_ms": 200.0}
    assert summarize([Outcome(None, False)], 5.0) == {"visitors": 1, "rate": 5.0, "merged": 0, "verified": 0}


def test_the_bench_runs_the_identify_stage() -> None:
    stages = {m.name: m for m in measurements(quick=True)}
    assert stages["identify_latency"].function == "amctl.load.identity_measure:measure_identify_latency"
    assert stages["identify_latency"].needs_stack


def test_the_email_stage_reports_kept_connections_beside_one_per_mail() -> None:
    pooled_mode, one_mode, order = email_measure.POOLED, email_measure.ONE_PER_MAIL, email_measure.ORDER
    assert pooled_mode.env() == {"AM_SMTP_POOL_SIZE": "8", "AM_SMTP_POOL_IDLE_S": "30.0"}
    assert one_mode.env()["AM_SMTP_POOL_IDLE_S"] == "0.0"  # the sender keeps none: one connection per mail
    assert order.count(pooled_mode) == order.count(one_mode) and order[::-1] == order  # drift weighs on both alike
    run = email_measure.CampaignRun
    pooled = email_measure.combine([run(1000, 1000, 4.0, 5), run(1000, 1000, 6.0, 6)])
    assert pooled == run(1000, 1000, 5.0, 6)
    one = email_measure.combine([run(1000, 1000, 8.0, 1000), run(1000, 998, 12.0, 998)])
    assert one == run(1000, 998, 10.0, 1000)  # the fewest sent: a lost mail is not averaged away
    assert email_measure.summarize(pooled, one, 8) == {
        "recipients": 1000, "sent": 1000, "duration_s": 5.0, "mails_per_s": 200.0, "smtp_connections": 6,
        "pool_size": 8, "campaigns_each": 2,
        "one_connection_per_mail": {"sent": 998, "duration_s": 10.0, "mails_per_s": 99.8, "smtp_connections": 1000},
        "pooled_vs_one_per_mail": 2.0}
    assert "pooled_vs_one_per_mail" not in email_measure.summarize(pooled, run(1000, 0, 0.0, 0), 8)


def test_the_bench_runs_the_email_stage_on_the_stack() -> None:
    stage = {m.name: m for m in measurements(quick=True)}["email"]
    assert stage.function == "amctl.load.email_measure:measure_email_throughput" and stage.needs_stack
    assert stage.kwargs == {"recipients": 1000}


def test_only_runs_the_named_stages_in_the_plans_order() -> None:
    plan = measurements(quick=True)
    assert [m.name for m in selected(plan, ["email", "seed_flow"])] == ["seed_flow", "email"]
    assert selected(plan, []) == plan
    with pytest.raises(typer.BadParameter, match="no stage 'nope'"):
        selected(plan, ["nope"])
    assert [m.name for m in plan[-3:]] == ["email", "backfill", "state_backends"]  # after every earlier figure


SETUP = ladder.Setup(20, 10.08, CpuUse({"rule-engine": 0.3, "kafka": 0.15}, 0.6, 2, 3.0))


def result(rate: int, p99_ms: float | None = 400.0, achieved: float | None = None, dropped: int = 0,
           errors: int = 0, drained: bool = True, generator_cores: float = 0.1) -> StepResult:
    step = ladder.plan([rate], 3.0)[0]
    sent = int(rate * 3.0 / step.batch_size)
    use = CpuUse({"rule-engine": 1.2, "load-generator": generator_cores}, 1.9, 2, 3.0)
    return StepResult(step, rate if achieved is None else achieved, sent, dropped, errors, 0, rate * 3,
                      None if p99_ms is None else p99_ms / 3, p99_ms, 2500.0, 6.5 if drained else 180.0, drained, use)


def test_the_ladder_sends_single_events_up_to_2000_and_batches_above() -> None:
    steps = ladder.plan(ladder.LADDER_RATES, 10.0)
    assert [(s.rate, s.batch_size) for s in steps] == [(500, 1), (1000, 1), (2000, 1), (3000, 100), (5000, 100),
                                                      (8000, 100), (10_000, 100)]
    assert {s.seconds for s in steps} == {10.0}
    assert [s.rate for s in ladder.plan([5000, 500], 3.0)] == [500, 5000]  # always climbing


def test_the_bench_climbs_the_whole_ladder_and_quick_climbs_fewer_shorter_rungs() -> None:
    full = {m.name: m for m in measurements(quick=False)}["assignment_latency"]
    quick = {m.name: m for m in measurements(quick=True)}["assignment_latency"]
    assert full.function == quick.function == "amctl.load.measures:measure_assignment_latency"
    assert full.kwargs == {"seconds": 10.0, "rates": list(ladder.LADDER_RATES)}
    assert quick.kwargs == {"seconds": 3.0, "rates": list(ladder.QUICK_LADDER_RATES)}
    assert set(ladder.QUICK_LADDER_RATES) < set(ladder.LADDER_RATES) and max(ladder.QUICK_LADDER_RATES) == 10_000


@pytest.mark.parametrize(("step", "verdict", "reason"), [
    (result(2000), Verdict.PASSED, "p99 400 ms"),
    (result(2000, p99_ms=1200.0), Verdict.MISSED, "p99 1200 ms"),
    (result(5000, achieved=4600.0), Verdict.MISSED, "achieved 4600 of 5000 ev/s"),
    (result(1000, dropped=3), Verdict.MISSED, "3 dropped, 0 errors"),
    (result(8000, p99_ms=3100.0), Verdict.STOPPED, "p99 3100 ms, well over 1 s"),
    (result(10_000, achieved=7000.0, generator_cores=0.98), Verdict.UNDELIVERED,
     "achieved 7000 of 10000 ev/s (the load generator used 0.98 cores)"),
    (result(1000, errors=200), Verdict.UNDELIVERED, "6.7% of requests failed"),
    (result(500, dropped=300, achieved=450.0), Verdict.MISSED, "achieved 450 of 500 ev/s"),  # a stall, no ceiling
    (result(500, p99_ms=None), Verdict.STOPPED, "no membership was written"),
    (result(3000, drained=False), Verdict.STOPPED, "the backlog did not drain within 180 s"),
])
def test_a_step_passes_misses_or_clearly_fails(step: StepResult, verdict: Verdict, reason: str) -> None:
    assert ladder.judge(step) == (verdict, reason)


def test_the_climb_goes_on_past_a_miss_and_stops_at_a_clear_failure() -> None:
    p99 = {500: 200.0, 1000: 1100.0, 2000: 600.0, 3000: 4000.0, 5000: 300.0}
    ran: list[int] = []

    def run(step: Step) -> StepResult:
        ran.append(step.rate)
        return result(step.rate, p99_ms=p99[step.rate])

    steps = ladder.plan([500, 1000, 2000, 3000, 5000], 3.0)
    rungs = ladder.climb(steps, run)
    assert ran == [500, 1000, 2000, 3000]  # 5,000 is never sent: 3,000 clearly failed
    assert [r.verdict for r in rungs] == [Verdict.PASSED, Verdict.MISSED, Verdict.PASSED, Verdict.STOPPED]
    figures = ladder.report(SETUP, rungs, steps)
    assert figures["max_rate_with_p99_under_1s"] == 2000
    assert figures["ladder_stopped"] == {"at_rate": 3000, "reason": "p99 4000 ms, well over 1 s"}
    assert figures["ladder_not_run"] == [5000]


def test_one_event_requests_that_cannot_keep_up_give_way_to_batches_which_end_the_climb() -> None:
    achieved = {500: 500.0, 1000: 700.0, 2000: 2000.0, 3000: 3000.0, 5000: 3500.0, 8000: 8000.0}
    ran: list[int] = []

    def run(step: Step) -> StepResult:
        ran.append(step.rate)
        return result(step.rate, achieved=achieved[step.rate])

    steps = ladder.plan(achieved, 3.0)
    rungs = ladder.climb(steps, run)
    assert ran == [500, 1000, 3000, 5000]  # no more one-event steps after 1,000; no more steps after 5,000
    assert [r.verdict for r in rungs] == [Verdict.PASSED, Verdict.UNDELIVERED, Verdict.PASSED, Verdict.UNDELIVERED]
    figures = ladder.report(SETUP, rungs, steps)
    assert figures["max_rate_with_p99_under_1s"] == 3000 and figures["max_single_event_rate_with_p99_under_1s"] == 500
    assert figures["ladder_stopped"] == {"at_rate": 5000, "reason": "achieved 3500 of 5000 ev/s "
                                                                     "(the load generator used 0.10 cores)"}
    assert figures["ladder_not_run"] == [2000, 8000]


def test_the_report_keeps_the_earlier_keys_beside_the_ladder() -> None:
    steps = ladder.plan([500, 5000], 3.0)
    rungs = [Rung(result(500), *ladder.judge(result(500))), Rung(result(5000, 900.0), Verdict.PASSED, "p99 900 ms")]
    figures = ladder.report(SETUP, rungs, steps)
    assert list(figures) == ["segments", "backfill_drain_s", "by_rate", "sustained", "max_rate_with_p99_under_1s",
                             "max_single_event_rate_with_p99_under_1s", "ladder", "ladder_stopped", "ladder_not_run",
                             "cpu_idle", "cpu_at_max_rate"]
    assert figures["segments"] == 20 and figures["backfill_drain_s"] == 10.1
    assert figures["cpu_idle"]["cores"] == {"rule-engine": 0.3, "kafka": 0.15}
    assert list(figures["by_rate"]) == ["500"] and list(figures["sustained"]) == ["5000"]
    assert figures["by_rate"]["500"] == {"achieved_rate": 500.0, "dropped": 0, "errors": 0, "drain_s_after_load": 6.5,
                                         "assignments": 1500, "p50_ms": 133.3, "p99_ms": 400.0}
    step = figures["ladder"][1]
    assert step["target_rate"] == 5000 and step["batch_size"] == 100 and step["verdict"] == "passed"
    assert step["max_ms"] == 2500.0 and step["late"] == 0
    assert step["cpu"] == {"cores": {"rule-engine": 1.2, "load-generator": 0.1}, "outside_stack_cores": 0.6,
                           "machine_busy_cores": 1.9, "machine_cpus": 2, "seconds": 3.0}
    assert figures["max_rate_with_p99_under_1s"] == 5000 and figures["cpu_at_max_rate"] == step["cpu"]
    assert figures["ladder_stopped"] is None and figures["ladder_not_run"] == []
    nothing = ladder.report(SETUP, [Rung(result(500, 1500.0), Verdict.MISSED, "p99 1500 ms")], steps)
    assert nothing["max_rate_with_p99_under_1s"] is None and nothing["cpu_at_max_rate"] is None


def test_the_maximum_is_the_bound_of_the_highest_bucket_that_gained() -> None:
    inf = float("inf")
    before = {0.5: 10.0, 1.0: 10.0, 2.5: 10.0, inf: 10.0}
    assert ladder.highest_bucket(before, {0.5: 15.0, 1.0: 19.0, 2.5: 20.0, inf: 20.0}) == 2.5
    assert ladder.highest_bucket(before, {0.5: 12.0, 1.0: 12.0, 2.5: 12.0, inf: 12.0}) == 0.5
    assert ladder.highest_bucket(before, {0.5: 12.0, 1.0: 12.0, 2.5: 12.0, inf: 13.0}) == inf
    assert ladder.highest_bucket(before, before) is None


def test_a_proc_stat_line_is_read_even_when_the_command_name_holds_parentheses() -> None:
    line = "4242 (we (ird)) name) S 17 4242 4242 0 -1 4194304 101 0 0 0 250 40 3 7 20 0 1 0 1228469 3133440 355"
    assert cpu.parse_stat(line) == ProcStat(4242, "we (ird)) name", 17, 290, 10)
    assert cpu.machine_busy_ticks("cpu  100 5 40 900 30 2 3 1 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n") == 151


def test_each_process_goes_to_its_nearest_component() -> None:
    stats = {pid: ProcStat(pid, "p", ppid, 10, 0) for pid, ppid in
             ((1, 0), (100, 1), (101, 100), (102, 101), (200, 100), (300, 1))}
    assert cpu.owners(stats, {"engine": 100, "jvm": 101}) == {100: "engine", 200: "engine", 101: "jvm", 102: "jvm"}
    assert cpu.ticks_by_component(stats, {"engine": 100, "jvm": 101, "gone": 999}) == {
        "engine": 20, "jvm": 20, "gone": 0}
    assert cpu.children_named({**stats, 103: ProcStat(103, "java", 100, 0, 0)}, 100, "java") == [103]


def test_a_stack_that_is_not_running_has_only_the_load_generator_to_measure(tmp_path: Path) -> None:
    assert cpu.local_stack_roots(AmctlSettings(state_dir=tmp_path)) == {cpu.LOAD_GENERATOR: os.getpid()}


# A component's root that starts a child burning CPU it keeps running, and a second one that burns and exits
# (reaped: its CPU reaches the root's cutime); each waits for a line on stdin before the next part.
BURN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"
ROOT = f"""
import subprocess, sys
kept = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()\\n" + {BURN.format(s=0.6)!r}
                         + "print('burnt', flush=True); sys.stdin.readline()"],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
print(kept.pid, flush=True)
sys.stdin.readline()
kept.stdin.write("go\\n"); kept.stdin.flush()
subprocess.run([sys.executable, "-c", {BURN.format(s=0.3)!r}], check=True)
kept.stdout.readline()
print("burnt", flush=True)
sys.stdin.readline()
kept.stdin.write("bye\\n"); kept.stdin.flush(); kept.wait()
"""


@pytest.fixture
def burning_tree() -> Iterator[subprocess.Popen[str]]:
    root = subprocess.Popen([sys.executable, "-c", ROOT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield root
    finally:
        if root.poll() is None:
            assert root.stdin is not None
            root.stdin.write("bye\n")
            root.stdin.flush()
        root.wait(30)
        for stream in (root.stdin, root.stdout):
            if stream is not None:
                stream.close()


def test_cpu_is_charged_to_the_tree_that_burnt_it(burning_tree: subprocess.Popen[str]) -> None:
    assert burning_tree.stdin is not None and burning_tree.stdout is not None
    kept = int(burning_tree.stdout.readline())
    roots = {"root": burning_tree.pid, "kept child": kept}
    before = cpu.snapshot(roots)
    burning_tree.stdin.write("go\n")
    burning_tree.stdin.flush()
    assert burning_tree.stdout.readline().strip() == "burnt"
    after = cpu.snapshot(roots)
    seconds = {name: (after.components[name] - before.components[name]) / cpu.TICKS_PER_S for name in roots}
    assert seconds["kept child"] >= 0.55  # its own 0.6 s, on its own: a root inside another component
    # the reaped child's 0.3 s (and its interpreter's start) through cutime, without the kept child's 0.6 s
    assert 0.25 <= seconds["root"] < 0.6
    use = cpu.cpu_use(before, after)
    assert set(use.by_component) == set(roots) and use.machine_cpus >= 1
    assert use.by_component["kept child"] == pytest.approx(seconds["kept child"] / use.seconds)
    assert use.machine_busy > 0 and use.as_json()["outside_stack_cores"] >= 0


def test_the_generator_stage_sends_batches_too_and_reports_its_own_cpu() -> None:
    figures = measure_generator_accuracy([200], seconds=0.5, batch_rates=[2000], batch_size=100)
    assert list(figures) == ["at_200", "batch_at_2000"]
    for run in figures.values():
        assert run["errors"] == 0 and run["achieved_rate"] > 0
        assert run["generator_cpu_cores"] > 0
    stage = {m.name: m for m in measurements(quick=True)}["load_generator"]
    assert stage.function == "amctl.load.measures:measure_generator_accuracy"
    # the ladder's top rung, in batches: what the bench's generator stage checks unless told otherwise
    batch_rates = inspect.signature(measure_generator_accuracy).parameters["batch_rates"].default
    assert stage.kwargs.get("batch_rates", batch_rates) == (max(ladder.LADDER_RATES),)


def test_the_backfill_stage_seeds_a_known_share_and_marks_its_live_events() -> None:
    stage = {m.name: m for m in measurements(quick=True)}["backfill"]
    assert stage.function == "amctl.load.backfill_measure:measure_backfill" and stage.needs_stack
    assert stage.kwargs == {"profiles": 100_000}
    threshold, matching = backfill_measure.threshold_for(100_000, 0.075)
    assert (threshold, matching) == (4625, 7_500)  # totalSpent is i % 5000: 375 values of 5000 match
    events = backfill_measure.MarkedEvents(users=10, mix=[("page_view", 1.0)], marker="run1", user_prefix="live-")
    body = events.event()
    assert body["properties"]["benchLive"] == "run1" and body["userId"].startswith("live-")
