"""When to call a destination again after a call that was not delivered: the retry policy, pure.

Exponential backoff with jitter: the n-th retry waits about `base_s * 2**(n-1)` (at most `max_s`),
drawn from its upper half so that many changes failing together do not come back together. A
Retry-After the destination sent is a floor. Once `give_up_s` has passed since the first attempt the
change is given up (failed); the last retry is moved up to that moment rather than past it, unless
the destination itself asked for a later one.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_s: float
    max_s: float
    give_up_s: float

    def backoff(self, attempts: int, draw: Callable[[], float] = random.random) -> float:
        """The wait after the `attempts`-th failed attempt (1 for the first), jittered in its upper half."""
        ceiling = min(self.max_s, self.base_s * 2.0 ** min(max(attempts, 1) - 1, 62))
        return ceiling * (0.5 + 0.5 * draw())

    def next_delay(self, attempts: int, elapsed_s: float, retry_after_s: float | None = None,
                   draw: Callable[[], float] = random.random) -> float | None:
        """Seconds until the next attempt, or None to give up.

        `attempts` counts the attempts made so far (this one included), `elapsed_s` is the time since
        the first of them began, `retry_after_s` what the destination asked for.
        """
        remaining = self.give_up_s - elapsed_s
        if remaining <= 0:
            return None
        delay = self.backoff(attempts, draw)
        if retry_after_s is not None:
            if retry_after_s > remaining:  # not before it asked, and not after we give up: so never
                return None
            delay = max(delay, retry_after_s)
        return min(delay, remaining)
