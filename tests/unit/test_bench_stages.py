"""`amctl bench`'s stages: each a plain function run as `python -m amctl.measure`, with a typed result, and
the bench stack's rate-limit override given to its services, not to amctl's own environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer

from amctl.benchmarks import BENCH_SERVICE_ENV, BenchReport, Measurement, MeasurementResult, run_measurement
from amctl.commands.bench import measurements, selected
from amctl.load import backfill_measure, email_measure
from amctl.load.identity_measure import Outcome, is_merged, make_visitors, summarize
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
    assert [m.name for m in plan[-2:]] == ["email", "backfill"]  # after every figure that existed before them


def test_the_backfill_stage_seeds_a_known_share_and_marks_its_live_events() -> None:
    stage = {m.name: m for m in measurements(quick=True)}["backfill"]
    assert stage.function == "amctl.load.backfill_measure:measure_backfill" and stage.needs_stack
    assert stage.kwargs == {"profiles": 100_000}
    threshold, matching = backfill_measure.threshold_for(100_000, 0.075)
    assert (threshold, matching) == (4625, 7_500)  # totalSpent is i % 5000: 375 values of 5000 match
    events = backfill_measure.MarkedEvents(users=10, mix=[("page_view", 1.0)], marker="run1", user_prefix="live-")
    body = events.event()
    assert body["properties"]["benchLive"] == "run1" and body["userId"].startswith("live-")
