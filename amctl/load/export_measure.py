"""`amctl bench`'s member export: a large STATIC segment exported as CSV over HTTP, with the Segment
API's memory sampled while it streams."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson
import psycopg

from amctl.local import processes
from amctl.local.stack import LocalStack
from amctl.settings import AmctlSettings

SAMPLE_S = 0.05
PLANS = ("free", "pro", "team")
COUNTRIES = ("AT", "DE", "CH", "FR", "US")


def _seed(database_url: str, segment_id: str, prefix: str, members: int) -> None:
    """`members` memberships and their profiles, by COPY. The profiles are dated a day back, so the rule
    engine's settle pass after the segment's creation (profiles written since) does not re-evaluate them."""
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        with cur.copy("COPY segment_memberships (segment_id, user_id, segment_version, entered_at, source)"
                      " FROM STDIN") as copy:
            for i in range(members):
                copy.write_row((segment_id, f"{prefix}{i:07d}", 1, "2026-11-25T03:16:15Z", "static"))
        with cur.copy("COPY user_profiles (user_id, profile, updated_at) FROM STDIN") as copy:
            for i in range(members):
                user = f"{prefix}{i:07d}"
                traits = {"plan": PLANS[i % 3], "country": COUNTRIES[i % 5], "email": f"{user}@example.com"}
                copy.write_row((user, orjson.dumps({"userId": user, "traits": traits, "totalSpent": i % 5000,
                                                    "eventCount": 1 + i % 40}).decode(), "2026-11-24T00:00:00Z"))


def _remove(database_url: str, segment_id: str, prefix: str) -> None:
    """The seeded rows go before the segment does, so its delete has no members to re-evaluate."""
    with psycopg.connect(database_url) as conn:
        conn.execute("DELETE FROM segment_memberships WHERE segment_id = %s", (segment_id,))
        conn.execute("DELETE FROM user_profiles WHERE user_id LIKE %s", (prefix + "%",))


@contextmanager
def _peak_rss(pid: int) -> Iterator[list[int]]:
    """Samples the process's RSS (with its children) every SAMPLE_S while the block runs; yields the list
    the samples go into."""
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(processes.rss_bytes(pid))
            stop.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    try:
        yield samples
    finally:
        stop.set()
        sampler.join()


def measure_member_export(members: int = 100_000) -> dict[str, Any]:
    """A STATIC segment of `members` (memberships and profiles seeded straight into PostgreSQL), exported
    as CSV with three traits from the bench stack's Segment API: time, rows/s, bytes, and the Segment
    API's RSS before and at its peak during the export."""
    settings = AmctlSettings()
    database_url = os.environ["AM_DATABASE_URL"]  # the bench hands every measure the services' environment
    pid = next(c.pid for c in LocalStack(settings).status().components if c.name == "segment-api")
    assert pid is not None, "the Segment API is not running"
    prefix = f"export-{uuid.uuid4().hex[:6]}-"
    with httpx.Client(base_url=settings.url(settings.ports.segment_api), timeout=60) as client:
        created = client.post("/api/segments", json={"name": f"export bench {prefix}", "type": "STATIC"})
        created.raise_for_status()
        segment_id = str(created.json()["id"])
        try:
            _seed(database_url, segment_id, prefix, members)
            before = processes.rss_bytes(pid)
            lines = size = 0
            with _peak_rss(pid) as samples:
                started = time.perf_counter()
                with client.stream("GET", f"/api/segments/{segment_id}/members/export",
                                   params={"format": "csv", "traits": "plan,country,email"}) as response:
                    response.raise_for_status()
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        lines += chunk.count(b"\n")
                seconds = time.perf_counter() - started
        finally:
            _remove(database_url, segment_id, prefix)
            client.delete(f"/api/segments/{segment_id}")
    exported = lines - 1  # the header
    assert exported == members, f"exported {exported} of {members} members"
    return {"members": exported, "seconds": round(seconds, 2), "rows_per_s": round(exported / seconds),
            "bytes": size, "segment_api_peak_rss_mib": round(max(samples, default=before) / 2**20, 1),
            "segment_api_rss_before_mib": round(before / 2**20, 1)}
