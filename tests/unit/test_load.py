"""The load generator's schedule, event mix and thresholds (pure parts; the runner is tested e2e)."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from amctl.load.profile import MIXES, EventFactory, LoadConfigError, parse_mix
from amctl.load.runner import LoadResult
from amctl.load.schedule import ArrivalSchedule, Stage, parse_duration, parse_ramp
from amctl.load.thresholds import parse_threshold

pytestmark = pytest.mark.unit


def test_constant_rate_schedule_is_evenly_spaced_and_exact() -> None:
    times = list(ArrivalSchedule([Stage(400, 10)]).due_times())
    assert len(times) == 4000
    assert times[0] == 0.0
    assert times[1] == pytest.approx(0.0025)
    assert times[-1] == pytest.approx(9.9975)


def test_ramp_integrates_the_rate() -> None:
    schedule = ArrivalSchedule(parse_ramp("100:10s,100:5s"), start_rate=0)
    times = list(schedule.due_times())
    assert len(times) == schedule.expected_sends() == 500 + 500
    first_half = sum(1 for t in times if t < 5)
    assert first_half == pytest.approx(125, abs=1)  # a linear ramp from 0 to 50/s over 5 s
    assert all(b >= a for a, b in itertools.pairwise(times))


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("10s", 10), ("2m", 120), ("7", 7)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["ten", "10x", "-1s"])
def test_bad_durations_are_rejected(bad: str) -> None:
    with pytest.raises(LoadConfigError, match="not a duration"):
        parse_duration(bad)


def test_bad_ramp_says_what_it_expects() -> None:
    with pytest.raises(LoadConfigError, match="rate:duration"):
        parse_ramp("100-10s")


def test_mix_by_name_and_custom() -> None:
    assert parse_mix("purchase-heavy") == MIXES["purchase-heavy"]
    assert parse_mix("purchase=1,page_view=3") == [("purchase", 1.0), ("page_view", 3.0)]
    with pytest.raises(LoadConfigError, match="type=weight"):
        parse_mix("purchase")


def test_events_follow_the_mix_and_user_space() -> None:
    factory = EventFactory(users=50, mix=[("purchase", 1), ("page_view", 3)], seed=7)
    events = [factory.event() for _ in range(4000)]
    types = Counter(e["eventType"] for e in events)
    assert types["purchase"] / 4000 == pytest.approx(0.25, abs=0.03)
    assert all("amount" in e["properties"] for e in events if e["eventType"] == "purchase")
    assert {e["userId"] for e in events} <= {f"load-user-{i}" for i in range(50)}


def test_zipf_skews_towards_the_first_users() -> None:
    factory = EventFactory(users=1000, mix=MIXES["default"], distribution="zipf", seed=3)
    users = Counter(factory.event()["userId"] for _ in range(5000))
    top, _ = users.most_common(1)[0]
    assert top == "load-user-0"
    assert users["load-user-0"] > 10 * max(users.get("load-user-500", 0), 1)


@pytest.mark.parametrize(
    ("text", "metric", "value", "figures", "passes"),
    [
        ("p99<50ms", "p99", 50.0, {"p99": 49.0}, True),
        ("p99<50ms", "p99", 50.0, {"p99": 51.0}, False),
        ("p95<=1s", "p95", 1000.0, {"p95": 1000.0}, True),
        ("errors<0.1%", "errors", 0.001, {"errors": 0.002}, False),
        ("achieved_rate>=396", "achieved_rate", 396.0, {"achieved_rate": 400.0}, True),
    ],
)
def test_thresholds(text: str, metric: str, value: float, figures: dict[str, float], passes: bool) -> None:
    threshold = parse_threshold(text)
    assert (threshold.metric, threshold.value) == (metric, pytest.approx(value))
    assert threshold.check(figures)[0] is passes


@pytest.mark.parametrize(("bad", "message"), [("p99<50", "time unit"), ("latency<5ms", "unknown metric"),
                                              ("p99 50ms", "expected METRIC")])
def test_bad_thresholds(bad: str, message: str) -> None:
    with pytest.raises(LoadConfigError, match=message):
        parse_threshold(bad)


def test_report_counts_statuses_by_the_second_they_were_sent() -> None:
    result = LoadResult(target_rate=10.0, duration_s=3.0, batch_size=1)
    for status, sent_at in (("202", 0.2), ("202", 0.7), ("503", 1.5), ("202", 2.9)):
        result.record(status, 0.01, status == "202", sent_at)
    report = result.as_json()
    assert report["statuses"] == {"202": 3, "503": 1}
    assert report["statuses_by_second"] == [{"second": 0, "statuses": {"202": 2}},
                                            {"second": 1, "statuses": {"503": 1}},
                                            {"second": 2, "statuses": {"202": 1}}]
