"""Condition evaluations per second of compiled rules, single-threaded (`amctl bench` runs it)."""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from server.domain.profile import Profile
from server.domain.rules import compile_rule, evaluate, parse_rule


def bench_segment_id(i: int) -> str:
    """The id of the bench's i-th segment (the job bench publishes RULES under these ids)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench-{i}"))


VIP, CHURNED = bench_segment_id(0), bench_segment_id(1)  # the segment reference refers to two bench segments
# Rules whose leaves are all evaluated (no short-circuit) on the generated profiles are counted
# exactly; see `_leaves_evaluated`.
RULES: list[dict[str, Any]] = [
    {"conditions": [{"field": "totalSpent", "operator": "gt", "value": 1000}]},
    {"all": [{"field": "country", "operator": "in", "value": ["DE", "AT", "CH"]},
             {"field": "purchaseCount", "operator": "gte", "value": 2}]},
    {"any": [{"field": "plan", "operator": "eq", "value": "enterprise"},
             {"field": "totalSpent", "operator": "between", "value": [500, 5000]}]},
    {"not": {"field": "emailOptOut", "operator": "eq", "value": True}},
    {"all": [{"field": "eventCount", "operator": "gt", "value": 3},
             {"any": [{"field": "email", "operator": "ends_with", "value": ".de"},
                      {"field": "age", "operator": "lt", "value": 30}]}]},
    {"event": "purchase", "count": {"gte": 3}, "within": "P7D"},
    # the forms marketers write beyond counts: a filtered count, an aggregate, a bounded window,
    # the last occurrence, and a segment reference
    {"event": "purchase", "where": {"field": "category", "operator": "eq", "value": "shoes"},
     "count": {"gte": 2}, "within": "P30D"},
    {"event": "purchase", "avg": {"field": "amount", "gte": 100}, "within": "P90D"},
    {"event": "purchase", "count": {"gte": 1}, "between": ["P30D", "P7D"]},
    {"event": "purchase", "last": {"before": "-P3D"}},
    {"all": [{"segment": VIP}, {"not": {"segment": CHURNED}}]},
]


def _profiles(n: int, now: datetime) -> list[Profile]:
    rng = random.Random(42)
    return [
        Profile(
            user_id=f"u{i}",
            traits={"country": rng.choice(["DE", "FR", "US", "AT"]), "plan": rng.choice(["free", "pro"]),
                    "email": f"u{i}@example." + rng.choice(["de", "com"]), "age": rng.randint(18, 70)},
            total_spent=rng.uniform(0, 3000), purchase_count=rng.randint(0, 9), event_count=rng.randint(0, 50),
            history={"purchase": sorted((now.timestamp() - rng.uniform(0, 40 * 86400),
                                         {"amount": rng.choice((10.0, 80.0, 250.0)),
                                          "category": rng.choice(("shoes", "books", "garden"))})
                                        for _ in range(6))},
            event_times={"purchase": (now.timestamp() - 40 * 86400, now.timestamp() - rng.uniform(0, 10 * 86400))},
        )
        for i in range(n)
    ]


def _memberships(n: int) -> list[frozenset[str]]:
    rng = random.Random(43)
    return [frozenset(s for s in (VIP, CHURNED) if rng.random() < 0.5) for _ in range(n)]


def measure_rule_evaluations(seconds: float = 2.0, segments: int = 20) -> dict[str, Any]:
    """Evaluate `segments` compiled rules against many profiles for about `seconds`.

    A condition evaluation is one leaf test; leaves skipped by short-circuiting are not counted
    (they are counted by replaying each rule/profile pair once with a counting interpreter).
    """
    now = datetime.now(UTC)
    parsed = [parse_rule(RULES[i % len(RULES)]) for i in range(segments)]
    predicates = [compile_rule(r) for r in parsed]
    profiles = _profiles(2000, now)
    members = _memberships(len(profiles))
    subjects = list(zip(profiles, members, strict=True))
    leaves = sum(_leaves_evaluated(raw, p, now, m) for raw in [RULES[i % len(RULES)] for i in range(segments)]
                 for p, m in subjects)
    rounds, started = 0, time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for p, m in subjects:
            for predicate in predicates:
                predicate(p, now, m)
        rounds += 1
    elapsed = time.perf_counter() - started
    rule_evals = rounds * len(profiles) * len(predicates)
    return {
        "segments": segments,
        "rule_evaluations_per_s": round(rule_evals / elapsed),
        "condition_evaluations_per_s": round(rounds * leaves / elapsed),
        "conditions_per_rule": round(leaves / (len(profiles) * len(predicates)), 2),
    }


def _leaves_evaluated(raw: dict[str, Any], profile: Profile, now: datetime, member_of: frozenset[str]) -> int:
    """How many leaf conditions a short-circuiting evaluation of `raw` tests on `profile`."""
    if "conditions" in raw or "all" in raw:
        count = 0
        for child in raw.get("conditions", raw.get("all", [])):
            count += _leaves_evaluated(child, profile, now, member_of)
            if not evaluate(parse_rule(child), profile, now, member_of):
                break
        return count
    if "any" in raw:
        count = 0
        for child in raw["any"]:
            count += _leaves_evaluated(child, profile, now, member_of)
            if evaluate(parse_rule(child), profile, now, member_of):
                break
        return count
    if "not" in raw:
        return _leaves_evaluated(raw["not"], profile, now, member_of)
    return 1


if __name__ == "__main__":
    import json

    print(json.dumps(measure_rule_evaluations(), indent=2))
