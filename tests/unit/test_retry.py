"""The destinations' retry policy: backoff with jitter, Retry-After as a floor, giving up on time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain.retry import RetryPolicy

pytestmark = pytest.mark.unit

POLICY = RetryPolicy(base_s=1.0, max_s=600.0, give_up_s=86400.0)


def test_backoff_doubles_from_the_base_up_to_the_ceiling() -> None:
    top = [POLICY.backoff(n, draw=lambda: 1.0) for n in (1, 2, 3, 4, 10, 11, 200)]
    assert top == [1.0, 2.0, 4.0, 8.0, 512.0, 600.0, 600.0]
    assert [POLICY.backoff(n, draw=lambda: 0.0) for n in (1, 2, 11)] == [0.5, 1.0, 300.0]


@given(attempts=st.integers(1, 1000), draw=st.floats(0.0, 1.0))
def test_a_jittered_wait_stays_in_the_upper_half_of_its_step(attempts: int, draw: float) -> None:
    ceiling = min(600.0, 2.0 ** min(attempts - 1, 62))
    assert ceiling / 2 <= POLICY.backoff(attempts, draw=lambda: draw) <= ceiling


def test_retry_after_is_a_floor_not_a_ceiling() -> None:
    assert POLICY.next_delay(1, 0.0, retry_after_s=30.0, draw=lambda: 1.0) == 30.0
    assert POLICY.next_delay(12, 0.0, retry_after_s=30.0, draw=lambda: 1.0) == 600.0


def test_it_gives_up_once_the_time_is_over() -> None:
    assert POLICY.next_delay(5, 86400.0) is None
    assert POLICY.next_delay(5, 90000.0) is None
    assert POLICY.next_delay(5, 86399.0, draw=lambda: 1.0) == pytest.approx(1.0)  # the last try at the deadline


def test_a_retry_after_beyond_the_deadline_gives_up_now() -> None:
    assert POLICY.next_delay(3, 86000.0, retry_after_s=3600.0) is None
    assert POLICY.next_delay(3, 86000.0, retry_after_s=300.0, draw=lambda: 0.0) == 300.0
