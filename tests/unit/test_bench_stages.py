"""`amctl bench`'s stages: each a plain function run as `python -m amctl.measure`, with a typed result, and
the bench stack's rate-limit override given to its services, not to amctl's own environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from amctl.benchmarks import BENCH_SERVICE_ENV, BenchReport, Measurement, MeasurementResult, run_measurement
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
