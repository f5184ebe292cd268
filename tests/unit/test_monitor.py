"""`amctl top`'s arithmetic over real Prometheus exposition text (from prometheus_client registries)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from typer.testing import CliRunner

from amctl import monitor
from amctl.cli import app
from server.runtime.metrics import HttpMetrics

pytestmark = pytest.mark.unit


def exposition(requests: list[tuple[str, int, float]], accepted: int = 0) -> str:
    """A service's /metrics after handling `requests` (route, status, seconds)."""
    registry = CollectorRegistry()
    http = HttpMetrics("ingestion-api", registry)
    for route, status, seconds in requests:
        http.observe(route, "POST", status, seconds)
    Counter("am_events_accepted", "", ["event_type"], registry=registry).labels("purchase").inc(accepted)
    return generate_latest(registry).decode()


def test_service_rates_leave_out_monitoring_and_count_5xx() -> None:
    before = monitor.parse(exposition([("/api/events", 202, 0.01)]), at=10.0)
    handled = [("/api/events", 202, 0.004)] * 18 + [("/api/events", 503, 0.9)] * 2 + [("/metrics", 200, 0.001)] * 50
    after = monitor.parse(exposition([("/api/events", 202, 0.01), *handled]), at=12.0)
    row = monitor.service_row(before, after)
    assert row["requests_per_s"] == 10.0  # 20 API requests in 2 s; the 50 scrapes are not counted
    assert row["errors_5xx"] == 0.1
    assert 500 < row["p99_ms"] <= 1000  # the two slow 503s are the top 10 %: p99 lies in the (0.5, 1] s bucket
    assert monitor.service_row(before, monitor.Sample(12.0, up=False)) == {"up": False}


def test_an_idle_interval_has_no_percentile() -> None:
    sample = monitor.parse(exposition([("/api/events", 202, 0.01)]), at=1.0)
    assert monitor.service_row(sample, monitor.parse(exposition([("/api/events", 202, 0.01)]), at=3.0)) == {
        "up": True, "requests_per_s": 0.0, "errors_5xx": 0.0, "p99_ms": None}


def test_rates_sum_label_sets_and_ignore_counter_resets() -> None:
    before, after = monitor.parse(exposition([], accepted=100), 0.0), monitor.parse(exposition([], accepted=400), 3.0)
    assert monitor.rate(before, after, "am_events_accepted_total") == 100.0
    assert monitor.rate(after, before, "am_events_accepted_total") == 0.0  # a restarted service starts again at 0


def test_quantile_interpolates_within_a_bucket() -> None:
    before = {0.1: 0.0, 1.0: 0.0, float("inf"): 0.0}
    after = {0.1: 50.0, 1.0: 100.0, float("inf"): 100.0}
    assert monitor.quantile(before, after, 0.5) == pytest.approx(0.1)
    assert monitor.quantile(before, after, 0.75) == pytest.approx(0.55)
    assert monitor.quantile(before, before, 0.99) is None


def test_top_needs_a_running_local_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMCTL_STATE_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["top", "--once"])
    assert result.exit_code == 1 and "nothing is running" in result.output and "amctl up" in result.output
    remote = CliRunner().invoke(app, ["--target", "k8s", "top"])
    assert remote.exit_code == 1 and "Grafana" in remote.output
