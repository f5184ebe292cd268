"""What the load generator sends: users drawn uniformly or Zipf-skewed, event types from a mix."""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass
from typing import Any

from amctl.errors import UsageError

# name -> [(eventType, weight)]; purchases carry an amount, the others a page or product.
MIXES: dict[str, list[tuple[str, float]]] = {
    "default": [("page_view", 0.6), ("add_to_cart", 0.25), ("purchase", 0.15)],
    "purchase-heavy": [("purchase", 0.6), ("add_to_cart", 0.25), ("page_view", 0.15)],
    "browse": [("page_view", 0.9), ("add_to_cart", 0.1)],
}
CATEGORIES = ("electronics", "books", "fashion", "home", "sports")


class LoadConfigError(UsageError):
    """A load option that cannot be used as given (a usage error: exit status 2)."""


def parse_mix(spec: str) -> list[tuple[str, float]]:
    """A named mix (`default`, `purchase-heavy`, `browse`) or `type=weight,type=weight`."""
    if spec in MIXES:
        return MIXES[spec]
    parts = []
    for item in spec.split(","):
        name, sep, weight = item.partition("=")
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if not sep or not name.strip() or value <= 0:
            raise LoadConfigError(
                f"--mix: '{item}' is not type=weight; use a name ({', '.join(MIXES)})"
                " or e.g. purchase=0.3,page_view=0.7"
            )
        parts.append((name.strip(), value))
    return parts


@dataclass
class EventFactory:
    """Makes event bodies; deterministic for a given seed so runs can be repeated."""

    users: int
    mix: list[tuple[str, float]]
    distribution: str = "uniform"
    zipf_s: float = 1.1
    seed: int = 1
    user_prefix: str = "load-user-"

    def __post_init__(self) -> None:
        if self.users < 1:
            raise LoadConfigError("--users must be at least 1")
        if self.distribution not in ("uniform", "zipf"):
            raise LoadConfigError("--distribution must be 'uniform' or 'zipf'")
        self._random = random.Random(self.seed)
        self._types = [name for name, _ in self.mix]
        self._type_cdf = list(itertools.accumulate(weight for _, weight in self.mix))
        if self.distribution == "zipf":
            self._user_cdf = list(itertools.accumulate(1 / (rank**self.zipf_s) for rank in range(1, self.users + 1)))

    def _user(self) -> str:
        if self.distribution == "uniform":
            index = self._random.randrange(self.users)
        else:
            index = bisect.bisect_left(self._user_cdf, self._random.random() * self._user_cdf[-1])
        return f"{self.user_prefix}{index}"

    def event(self) -> dict[str, Any]:
        event_type = self._types[bisect.bisect_left(self._type_cdf, self._random.random() * self._type_cdf[-1])]
        properties: dict[str, Any] = {"category": self._random.choice(CATEGORIES)}
        if event_type == "purchase":
            properties["amount"] = round(self._random.uniform(5, 500), 2)
        return {"userId": self._user(), "eventType": event_type, "properties": properties}
