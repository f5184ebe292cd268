"""The rules that decide when a mail may go (quiet hours, frequency caps) and the unsubscribe tokens, pure."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.domain.email import EmailJob, FrequencyCap, QuietHours, parse_clock, zone
from server.runtime.secrets import SecretsUnavailable, new_key
from server.runtime.tokens import InvalidUnsubscribeToken, UnsubscribeTokens

pytestmark = pytest.mark.unit

ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Chatham"]
clocks = st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45]))
instants = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC))


def test_a_window_across_midnight_holds_evenings_and_early_mornings() -> None:
    quiet = QuietHours(time(21), time(8), "Europe/Paris")
    evening = datetime(2026, 12, 2, 21, 30, tzinfo=UTC)  # 22:30 in Paris
    assert quiet.resumes_at(evening, None) == datetime(2026, 12, 3, 7, 0, tzinfo=UTC)
    early = datetime(2026, 12, 3, 5, 0, tzinfo=UTC)  # 06:00 in Paris
    assert quiet.resumes_at(early, None) == datetime(2026, 12, 3, 7, 0, tzinfo=UTC)
    assert quiet.resumes_at(datetime(2026, 12, 3, 12, 0, tzinfo=UTC), None) is None
    # the recipient's own zone wins: 22:30 in Paris is 16:30 in New York, outside the window
    assert quiet.resumes_at(evening, "America/New_York") is None
    assert quiet.resumes_at(evening, "Not/AZone") is not None  # not a zone: the campaign's


def test_a_same_day_window_and_the_edges() -> None:
    lunch = QuietHours(time(12), time(14))
    assert lunch.resumes_at(datetime(2026, 6, 1, 12, 0, tzinfo=UTC), None) == datetime(2026, 6, 1, 14, tzinfo=UTC)
    assert lunch.resumes_at(datetime(2026, 6, 1, 14, 0, tzinfo=UTC), None) is None  # the end is open again
    assert lunch.resumes_at(datetime(2026, 6, 1, 11, 59, tzinfo=UTC), None) is None


def test_the_dst_change_resolves_to_a_real_instant() -> None:
    # 2026-03-29 in Paris: 02:00 does not exist; a window ending then ends at 03:00 local (01:00 UTC)
    quiet = QuietHours(time(1), time(2, 30), "Europe/Paris")
    resumes = quiet.resumes_at(datetime(2026, 3, 29, 0, 15, tzinfo=UTC), None)  # 01:15 local
    assert resumes is not None and resumes > datetime(2026, 3, 29, 0, 15, tzinfo=UTC)


@settings(max_examples=300, deadline=None)
@given(start=clocks, end=clocks, now=instants, zone_name=st.sampled_from(ZONES))
def test_resumes_at_is_later_and_outside_the_window(start: time, end: time, now: datetime, zone_name: str) -> None:
    if start == end:
        return
    quiet = QuietHours(start, end, zone_name)
    resumes = quiet.resumes_at(now, None)
    if resumes is None:
        return
    assert now < resumes <= now + timedelta(hours=25)
    assert quiet.resumes_at(resumes, None) is None  # mail may go at the moment the window ends


def test_bad_windows_and_caps_are_refused() -> None:
    with pytest.raises(ValueError, match="same time"):
        QuietHours(time(8), time(8))
    with pytest.raises(ValueError, match="IANA"):
        QuietHours(time(21), time(8), "Mars/Olympus")
    for text in ("8:00", "24:00", "08:60", "0800", "08:00:00"):
        with pytest.raises(ValueError, match="HH:MM"):
            parse_clock(text)
    assert zone("Europe/Paris") is not None and zone("../../etc/passwd") is None and zone("") is None
    assert FrequencyCap.parse(2, "P1D") == FrequencyCap(2, timedelta(days=1))
    for max_, within in ((0, "P1D"), (1, "PT30S"), (1, "P400D"), (1, "tomorrow")):
        with pytest.raises(ValueError):
            FrequencyCap.parse(max_, within)


def test_jobs_queued_before_the_new_fields_still_read() -> None:
    old = {"campaignId": "c", "userId": "u", "to": "u@example.com", "subject": "s", "body": "b",
           "queuedAt": "2026-12-01T00:00:00Z"}
    job = EmailJob.from_json(old)
    assert job.body_html is None and job.unsubscribe_url is None and job.timezone is None
    full = EmailJob("c", "u", "u@example.com", "s", "b", job.queued_at, "<p>b</p>", "https://x/u/t", "mailto:a@b",
                    "Europe/Paris")
    assert EmailJob.from_json(full.to_json()) == full and "bodyHtml" not in job.to_json()


def test_tokens_are_deterministic_sealed_and_bound_to_their_key() -> None:
    key = new_key()
    tokens = UnsubscribeTokens(key)
    token = tokens.token("campaign-1", "ann@example.com")
    assert token == UnsubscribeTokens(key).token("campaign-1", "ann@example.com")  # the same URL when rendered again
    assert "ann" not in token and len(token) < 200
    found = tokens.read(token)
    assert (found.campaign_id, found.user_id) == ("campaign-1", "ann@example.com")
    assert tokens.token("campaign-1", "bob") != token and tokens.token("campaign-2", "ann@example.com") != token
    flipped = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    for bad in (flipped, token[:-1], "", "x" * 600, "%%%", UnsubscribeTokens(new_key()).token("campaign-1", "ann")):
        with pytest.raises(InvalidUnsubscribeToken):
            tokens.read(bad)
    with pytest.raises(SecretsUnavailable, match="AM_SECRETS_KEY"):
        UnsubscribeTokens("").token("c", "u")
