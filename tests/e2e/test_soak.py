"""The soak, opt in: `pytest -m soak tests/e2e/test_soak.py` (never part of `make test`).

A stack of its own takes `amctl bench --soak` for AM_SOAK_DURATION (default 3m, sampled every
AM_SOAK_EVERY, default 30s) and must lose no acknowledged event, keep every interval's p99 of event →
membership written under AM_SOAK_P99_MS (default 1000) and no component's memory (PSS: shared pages
counted once) growing faster than AM_SOAK_MEMORY_MIB_PER_MIN (default 10) over the second half of the run,
after the warm-up of caches, pools and the JVM's heap. The broker's S3 server among them: it drops what
every reader has committed past, so it must stay as large as what is still unread.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from amctl.load.soak import BROKER, parse_option_duration, slope_per_minute
from tests.e2e.stack import Stack, amctl, stack_environment, started_stack

pytestmark = [pytest.mark.e2e, pytest.mark.soak]

DURATION = os.environ.get("AM_SOAK_DURATION", "3m")
EVERY = os.environ.get("AM_SOAK_EVERY", "30s")
P99_BOUND_MS = float(os.environ.get("AM_SOAK_P99_MS", "1000"))
MEMORY_BOUND_MIB_PER_MIN = float(os.environ.get("AM_SOAK_MEMORY_MIB_PER_MIN", "10"))
SECONDS = parse_option_duration(DURATION, "AM_SOAK_DURATION")


@pytest.fixture(scope="module")
def soak_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = stack_environment(tmp_path_factory.mktemp("soak-stack"))
    env["AMCTL_BROKER_KEEP_S"] = "0"  # the default: nothing here reads a topic after the fact
    with started_stack(env) as stack:
        yield stack


def late_growth(samples: list[dict[str, Any]], measure: str) -> dict[str, float]:
    """MiB per minute each component's `rss` or `pss` grew over the second half of the samples (the warm-up
    left out)."""
    later, key = samples[len(samples) // 2:], f"{measure}_mib"
    growth = {}
    for name in later[0][key]:
        slope = slope_per_minute([(s["at_s"], s[key][name]) for s in later if name in s[key]])
        if slope is not None:
            growth[name] = round(slope, 2)
    return growth


@pytest.mark.timeout(SECONDS + 1200)  # the run, the settle after it, and the stack's start and stop
def test_a_long_run_loses_nothing_and_keeps_its_latency_and_memory(
        soak_stack: Stack, record_property: Callable[[str, object], None]) -> None:
    run = amctl(soak_stack.env, "bench", "--soak", DURATION, "--every", EVERY, "--json", timeout=SECONDS + 900)
    assert run.returncode == 0, run.stderr
    soak = json.loads(run.stdout)["soak"]
    samples = soak["samples"]
    # PSS: RSS counts PostgreSQL's shared buffers once per backend, and they fill as backends touch them
    growth, rss_growth = late_growth(samples, "pss"), late_growth(samples, "rss")
    broker = {"rss_growth_mib": soak["broker"].get("rss_growth_mib"),
              "late_mib_per_min": growth.get(BROKER, 0) + growth.get("s3", 0),
              "rss_bytes_per_acked_event": soak["broker"].get("rss_bytes_per_acked_event"),
              "records_at_least": (soak["broker"].get("end") or {}).get("records_at_least")}
    print(f"\nsoak {DURATION}: acked {soak['acked']:,}, refused {soak['refused']:,}, lost {soak['lost']}; "
          f"p99 per interval {[s['p99_ms'] for s in samples]} ms; late growth MiB/min: PSS {growth}, "
          f"RSS {rss_growth}; "
          f"broker {broker}")
    record_property("soak_broker", json.dumps(broker))  # reported whether or not it is asserted on

    assert soak["acked"] > 0.9 * soak["rate"] * SECONDS
    assert soak["settled"] and soak["lost"] == 0, soak
    assert all(s["p99_ms"] is not None and s["p99_ms"] < P99_BOUND_MS for s in samples), samples
    over = {name: mib for name, mib in growth.items() if mib > MEMORY_BOUND_MIB_PER_MIN}
    assert not over, f"PSS grows faster than {MEMORY_BOUND_MIB_PER_MIN:g} MiB/min: {over}"
