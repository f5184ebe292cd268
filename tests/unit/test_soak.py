"""The soak's pure parts: its duration options, the sample of one interval, memory growth, acknowledged
events lost, and the report built from readings."""

from __future__ import annotations

import pytest
from rich.console import Console

from amctl.load.profile import LoadConfigError
from amctl.load.soak import (
    Reading,
    SoakConfig,
    losses,
    memory_growth,
    parse_option_duration,
    report,
    sample,
    slope_per_minute,
)
from amctl.load.soak_view import final_view
from amctl.local.broker import BrokerSize, HeldRecords
from amctl.local.s3 import StoreFigures

pytestmark = pytest.mark.unit
MIB = 2**20
INF = float("inf")


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("10m", 600), ("1h", 3600), ("1.5m", 90),
                                               ("500ms", 0.5), ("45", 45), (" 2m ", 120)])
def test_a_soak_lasts_as_long_as_its_option_says(text: str, seconds: float) -> None:
    assert parse_option_duration(text, "--soak") == seconds


@pytest.mark.parametrize(("text", "message"), [
    ("ten minutes", "--every: 'ten minutes' is not a duration; use e.g. 90s, 10m or 1h"),
    ("10x", "--every: '10x' is not a duration"),
    ("-1m", "--every: '-1m' is not a duration"),
    ("1h30m", "--every: '1h30m' is not a duration"),
    ("0s", "--every: the duration must be more than zero, not '0s'"),
])
def test_a_bad_duration_names_its_option(text: str, message: str) -> None:
    with pytest.raises(LoadConfigError, match=message):
        parse_option_duration(text, "--every")


def test_a_soak_samples_no_less_often_than_once() -> None:
    assert SoakConfig(60, every_s=60).every_s == 60
    with pytest.raises(LoadConfigError, match=r"--every \(90 s\) must not be longer than --soak \(60 s\)"):
        SoakConfig(60, every_s=90)
    with pytest.raises(LoadConfigError, match="--rate"):
        SoakConfig(60, rate=0, every_s=10)
    with pytest.raises(LoadConfigError, match="--users"):
        SoakConfig(60, users=0, every_s=10)


def broker(rss_mib: float, records: int | None, store_rss_mib: float = 0.0,
           store: StoreFigures | None = None) -> BrokerSize:
    held = HeldRecords({"user-events": records}) if records is not None else None
    return BrokerSize(False, int(rss_mib * MIB), int(store_rss_mib * MIB), held, store)


def reading(at_s: float, acked: int, assignments: dict[float, float], rss_mib: dict[str, float],
            refused: int = 0, applied: float = 0.0, records: int | None = None) -> Reading:
    return Reading(at_s, {name: int(mib * MIB) for name, mib in rss_mib.items()}, acked, refused, 0, applied,
                   assignments, broker(rss_mib.get("kafka", 0.0), records, rss_mib.get("s3", 0.0)),
                   {name: int(mib * MIB / 2) for name, mib in rss_mib.items()})


def test_a_sample_is_the_difference_of_two_readings() -> None:
    before = reading(60, 30_000, {0.1: 100, 0.5: 190, 1.0: 200, INF: 200}, {"kafka": 50, "rule-engine": 900},
                     refused=2, applied=29_000)
    after = reading(120, 60_000, {0.1: 100, 0.5: 290, 1.0: 300, INF: 300}, {"kafka": 80, "rule-engine": 905},
                    refused=5, applied=59_500, records=61_000)
    figures = sample(before, after)
    assert (figures["acked"], figures["refused"], figures["applied"], figures["assignments"]) == (30_000, 3, 30_500,
                                                                                                   100)
    assert figures["acked_per_s"] == 500.0 and figures["seconds"] == 60.0 and figures["at_s"] == 120.0
    # the interval's 100 assignments all fell between 100 and 500 ms: its quantiles are inside that bucket
    assert figures["p50_ms"] == pytest.approx(300.0) and figures["p99_ms"] == pytest.approx(496.0)
    assert figures["p99_past_last_bound"] is False
    assert figures["rss_mib"] == {"kafka": 80.0, "rule-engine": 905.0} and figures["total_rss_mib"] == 985.0
    assert figures["broker_records_at_least"] == 61_000


def test_an_interval_without_assignments_has_no_latency() -> None:
    same = {0.5: 10.0, INF: 10.0}
    figures = sample(reading(0, 0, same, {"kafka": 20}), reading(10, 0, same, {"kafka": 20}))
    assert figures["p50_ms"] is None and figures["p99_ms"] is None and figures["assignments"] == 0
    with pytest.raises(ValueError, match="after"):
        sample(reading(10, 0, same, {}), reading(10, 0, same, {}))


def test_growth_per_minute_is_fitted_over_the_samples() -> None:
    assert slope_per_minute([(60, 100), (120, 130), (180, 160)]) == pytest.approx(30.0)
    assert slope_per_minute([(60, 100)]) is None
    assert slope_per_minute([(30, 100), (60, 100)]) == 0.0


def test_memory_growth_from_the_start_and_per_minute_under_load() -> None:
    samples = [{"at_s": t, "rss_mib": {"kafka": k, "api": 80.0}, "total_rss_mib": k + 80.0}
               for t, k in ((60, 40.0), (120, 70.0), (180, 100.0))]
    assert memory_growth({"a": 0.1, "b": 0.2}, samples)["total"]["start"] == 0.3  # not 0.30000000000000004
    growth = memory_growth({"kafka": 20.0, "api": 75.0}, samples)
    assert growth["kafka"] == {"start": 20.0, "end": 100.0, "growth": 80.0, "per_minute": 30.0}
    # the step from idle to loaded (75 → 80) is growth from the start, not growth per minute under load
    assert growth["api"] == {"start": 75.0, "end": 80.0, "growth": 5.0, "per_minute": 0.0}
    assert growth["total"] == {"start": 95.0, "end": 180.0, "growth": 85.0, "per_minute": 30.0}


def test_growth_of_the_proportional_memory_is_fitted_the_same_way() -> None:
    samples = [{"at_s": t, "rss_mib": {"postgres": 400.0 + t}, "total_rss_mib": 400.0 + t,
                "pss_mib": {"postgres": 150.0}, "total_pss_mib": 150.0} for t in (60, 120)]
    assert memory_growth({"postgres": 300.0}, samples)["postgres"]["per_minute"] == 60.0
    assert memory_growth({"postgres": 140.0}, samples, "pss")["postgres"] == {
        "start": 140.0, "end": 150.0, "growth": 10.0, "per_minute": 0.0}


def test_a_component_started_during_the_soak_has_no_start() -> None:
    growth = memory_growth({}, [{"at_s": 60, "rss_mib": {"late": 10.0}, "total_rss_mib": 10.0}])
    assert growth["late"] == {"start": None, "end": 10.0, "growth": None, "per_minute": None}


def test_lost_events_are_counted_user_by_user() -> None:
    acked = {"a": 3, "b": 2, "c": 1}
    assert losses(acked, {"a": 3, "b": 2, "c": 1}) == losses(acked, dict(acked))
    assert losses(acked, {"a": 3, "b": 2, "c": 1}).lost == 0
    # b's refused-but-stored event does not hide the one of c that was acknowledged and never applied
    found = losses(acked, {"a": 3, "b": 3})
    assert (found.lost, found.unacknowledged_applied, found.users_short) == (1, 1, 1)
    assert losses(acked, {}).lost == 6 and losses(acked, {}).users_short == 3


def test_the_report_adds_up_the_readings() -> None:
    config = SoakConfig(120, rate=500, users=1000, every_s=60)
    start = reading(0, 0, {0.5: 0.0, INF: 0.0}, {"kafka": 20, "api": 70}, records=10)
    readings = [reading(60, 29_000, {0.5: 900.0, INF: 1000.0}, {"kafka": 40, "api": 80}, records=40_000),
                reading(120.5, 60_000, {0.5: 1900.0, INF: 2000.0}, {"kafka": 60, "api": 80}, refused=4,
                        records=80_000)]
    figures = report(config, start, readings, losses({"u": 60_000}, {"u": 60_000}), settle_s=7.04, settled=True)
    assert (figures["acked"], figures["refused"], figures["lost"], figures["settled"]) == (60_000, 4, 0, True)
    assert figures["achieved_rate"] == 497.9 and figures["settle_s"] == 7.0
    assert [s["acked"] for s in figures["samples"]] == [29_000, 31_000]
    # a tenth of the assignments fell past the last bound: p99 says no more than that bound
    assert figures["p99_ms_max"] == max(s["p99_ms"] for s in figures["samples"]) == 500.0
    assert figures["samples"][0]["p99_past_last_bound"] is True
    assert figures["rss_mib"]["kafka"]["growth"] == 40.0
    assert figures["pss_mib"]["kafka"]["growth"] == 20.0 and figures["pss_mib"]["total"]["end"] == 70.0
    assert figures["broker"]["rss_growth_mib"] == 40.0  # the broker's and its S3 server's
    assert figures["broker"]["rss_bytes_per_acked_event"] == round(40 * MIB / 60_000)
    assert figures["broker"]["end"]["records_at_least"] == 80_000
    assert figures["broker"]["end"]["storage"] == "memory"


def test_a_broker_that_did_not_answer_is_unknown_not_zero() -> None:
    assert broker(30, None).summary() == "in memory: holdings unknown (no answer within 1 s)"
    store = StoreFigures(False, 12, {"user-events": {"batches": 40, "bytes": 3 * MIB, "trimmed_batches": 900,
                                                     "trimmed_records": 20_000}})
    assert broker(30, 25_000, store=store).summary() == (
        "in memory: 3.0 MiB in 40 batches, 20,000 records dropped once read; 25,000 records produced")
    durable = BrokerSize(True, 0, 0, None, store)
    assert durable.summary().startswith("on disk: 3.0 MiB") and "produced" not in durable.summary()
    assert durable.as_json()["records_at_least"] is None and durable.as_json()["records_dropped"] == 20_000


def test_the_tables_say_a_backlog_is_not_a_loss_and_a_capped_p99_is_a_floor() -> None:
    config = SoakConfig(60, every_s=60)
    start = reading(0, 0, {10.0: 0.0, INF: 0.0}, {"kafka": 20, "s3": 30})
    late = [reading(60, 30_000, {10.0: 100.0, INF: 1000.0}, {"kafka": 20, "s3": 50}, records=30_000)]
    figures = report(config, start, late, losses({"u": 30_000}, {"u": 10_000}), settle_s=61, settled=False)
    console = Console(record=True, width=200)
    console.print(final_view(figures))
    text = console.export_text()
    assert "20,000 not applied when the check gave up" in text and "61 s (did not settle)" in text
    assert "≥ 10,000.0 ms" in text
    assert "s3 (the broker's records, in memory)" in text
