"""`amctl bench`'s email measurement: mails/s from a campaign's creation to its COMPLETED status.

A Communication API and an email worker of its own run against the bench stack's PostgreSQL (in a
database of their own, so the stack's fan-out never claims these campaigns) and broker (under a topic
prefix of their own), and deliver to an SMTP server inside this process that counts the connections
it is opened. The same campaign to a STATIC segment of `recipients` members is sent by a worker that
keeps its SMTP connections open (the default) and by one that opens a connection per mail
(`smtp_pool_idle_s=0`), in the order one, kept, kept, one (`ORDER`): a store that warms up, or a machine
that gets busier, over the run then weighs on both alike.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from amctl.local import processes
from amctl.local.mail_sink import SinkController
from amctl.settings import AmctlSettings

WAIT_S = 120.0  # the longest a campaign may take to complete before the stage fails
POLL_S = 0.02


@dataclass(frozen=True)
class WorkerMode:
    """How the measured email worker treats its SMTP connections."""

    name: str
    pool_size: int
    pool_idle_s: float

    def env(self) -> dict[str, str]:
        return {"AM_SMTP_POOL_SIZE": str(self.pool_size), "AM_SMTP_POOL_IDLE_S": str(self.pool_idle_s)}


POOLED = WorkerMode("pooled", pool_size=8, pool_idle_s=30.0)  # the settings' defaults
ONE_PER_MAIL = WorkerMode("one_connection_per_mail", pool_size=8, pool_idle_s=0.0)  # as before connections were kept
ORDER = (ONE_PER_MAIL, POOLED, POOLED, ONE_PER_MAIL)


@dataclass(frozen=True)
class CampaignRun:
    """One campaign's delivery: how many mails, how long until COMPLETED, how many SMTP connections it took."""

    recipients: int
    sent: int
    seconds: float
    connections: int

    def as_json(self) -> dict[str, Any]:
        return {"recipients": self.recipients, "sent": self.sent, "duration_s": round(self.seconds, 2),
                "mails_per_s": round(self.sent / self.seconds, 1) if self.seconds > 0 else None,
                "smtp_connections": self.connections}


def combine(runs: list[CampaignRun]) -> CampaignRun:
    """One mode's campaigns as one: the mean duration, the fewest mails sent, the most connections one took."""
    return CampaignRun(runs[0].recipients, min(r.sent for r in runs), sum(r.seconds for r in runs) / len(runs),
                       max(r.connections for r in runs))


def summarize(pooled: CampaignRun, one_per_mail: CampaignRun, pool_size: int) -> dict[str, Any]:
    """The stage's figures: the pooled run at the top, the one-connection-per-mail run beside it, and the gain."""
    baseline = one_per_mail.as_json()
    baseline.pop("recipients")
    figures = pooled.as_json() | {"pool_size": pool_size, "campaigns_each": ORDER.count(POOLED),
                                  ONE_PER_MAIL.name: baseline}
    if pooled.seconds > 0 and one_per_mail.seconds > 0 and one_per_mail.sent:
        figures["pooled_vs_one_per_mail"] = round((pooled.sent / pooled.seconds) /
                                                  (one_per_mail.sent / one_per_mail.seconds), 2)
    return figures


class CountingSink:
    """An aiosmtpd handler that accepts every mail and only counts it: the worker is measured, not the sink."""

    def __init__(self) -> None:
        self.mails = 0
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # the name aiosmtpd calls
        with self._lock:
            self.mails += 1
        return "250 OK"


def _members(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:06d}" for i in range(count)]


def _seed(database_url: str, segment_id: str, name: str, users: list[str]) -> None:
    """A STATIC segment of `users`, each with a profile that has an email address, straight into PostgreSQL."""
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO segments (id, name, type) VALUES (%s, %s, 'STATIC')", (segment_id, name))
        with cur.copy("COPY segment_memberships (segment_id, user_id, segment_version, entered_at, source)"
                      " FROM STDIN") as copy:
            for user in users:
                copy.write_row((segment_id, user, 1, "2026-01-01T00:00:00Z", "static"))
        with cur.copy("COPY user_profiles (user_id, profile, updated_at) FROM STDIN") as copy:
            for i, user in enumerate(users):
                traits = {"email": f"{user}@example.com", "firstName": f"Reader {i}", "plan": ("free", "pro")[i % 2]}
                copy.write_row((user, orjson.dumps({"userId": user, "traits": traits, "totalSpent": i % 500,
                                                    "eventCount": 1}).decode(), "2026-01-01T00:00:00Z"))


@contextmanager
def _service(module: str, env: dict[str, str], log: Path) -> Iterator[str]:
    """`python -m module` on a free port until the block ends; yields its base URL once it is healthy."""
    port = processes.free_port()
    pid = processes.spawn([sys.executable, "-m", module], {**env, "AM_PORT": str(port)}, log)
    url = f"http://{env.get('AM_HOST', '127.0.0.1')}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if not processes.process_alive(pid) or time.monotonic() > deadline:
                raise RuntimeError(f"{module} did not start: " + " | ".join(processes.tail(log)[-5:]))
            try:
                if httpx.get(f"{url}/actuator/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield url
    finally:
        processes.stop(pid)


# a mail as campaigns send them: personalised, text and HTML, with the one-click link in both
TEMPLATE = {"subject": "News for {{ firstName }}",
            "body": "Hello {{ firstName }},\n\nyour {{ plan }} plan news.\n\nUnsubscribe: {{ unsubscribe_url }}\n",
            "bodyHtml": "<p>Hello {{ firstName }},</p><p>your {{ plan }} plan news.</p>"
                        "<p><a href='{{ unsubscribe_url }}'>Unsubscribe</a></p>"}


def _send(api: httpx.Client, segment_id: str, name: str) -> tuple[dict[str, Any], float]:
    """Create a campaign to the segment now; returns it once COMPLETED, and the seconds since the create call."""
    started = time.perf_counter()
    created = api.post("/api/campaigns", json={"name": name, "segmentId": segment_id, "channel": "EMAIL",
                                               "schedule": "now", "template": TEMPLATE})
    created.raise_for_status()
    campaign = created.json()
    while campaign["status"] not in ("COMPLETED", "CANCELLED", "FAILED"):
        if time.perf_counter() - started > WAIT_S:
            raise RuntimeError(f"campaign {name} not COMPLETED after {WAIT_S:g} s: {campaign['status']} "
                               f"{campaign['counts']}")
        time.sleep(POLL_S)
        campaign = api.get(f"/api/campaigns/{campaign['id']}").raise_for_status().json()
    return campaign, time.perf_counter() - started


def measure_email_throughput(recipients: int = 1000) -> dict[str, Any]:
    """Mails/s through the email worker to an SMTP sink, with kept connections and with one per mail."""
    settings = AmctlSettings()
    run = uuid.uuid4().hex[:8]
    stack_db = os.environ["AM_DATABASE_URL"]  # the bench hands every measure the services' environment
    database_url = make_conninfo(stack_db, dbname=f"bench_email_{run}")
    handler = CountingSink()
    sink = SinkController(handler, hostname="127.0.0.1", port=processes.free_port(), ready_timeout=10)
    sink.start()
    env = {**os.environ, "AM_DATABASE_URL": database_url, "AM_TOPIC_PREFIX": f"bench-email-{run}.",
           "AM_SMTP_HOST": "127.0.0.1", "AM_SMTP_PORT": str(sink.port),
           "AM_KAFKA_SESSION_TIMEOUT_MS": "2000"}  # a worker joins its group in 1 s instead of 3 s
    runs: dict[str, list[CampaignRun]] = {mode.name: [] for mode in ORDER}
    try:
        subprocess.run([sys.executable, "-m", "server.stores.migrate"], env=env, check=True, capture_output=True,
                       timeout=120)  # the database and the prefixed topics
        segment_id, warm_up_id = str(uuid.uuid4()), str(uuid.uuid4())
        _seed(database_url, segment_id, f"email bench {run}", _members(f"eb-{run}-", recipients))
        _seed(database_url, warm_up_id, f"email bench warm-up {run}", [f"eb-{run}-warm-up"])
        with tempfile.TemporaryDirectory(prefix="amctl-email-bench-") as logs, \
                _service("server.communication_api", env, Path(logs) / "communication-api.log") as api_url, \
                httpx.Client(base_url=api_url, timeout=10, headers=settings.auth_headers()) as api:
            for i, mode in enumerate(ORDER):
                with _service("server.email_worker", env | mode.env(), Path(logs) / f"email-worker-{i}.log"):
                    _send(api, warm_up_id, f"warm-up {i} {run}")  # the worker has joined its group
                    sessions, mails = sink.sessions, handler.mails
                    campaign, seconds = _send(api, segment_id, f"email bench {i} {mode.name} {run}")
                    sent = int(campaign["counts"]["sent"])
                    if handler.mails - mails != sent:
                        raise RuntimeError(f"{mode.name}: the campaign counts {sent} sent, the sink received "
                                           f"{handler.mails - mails}")
                    runs[mode.name].append(CampaignRun(recipients, sent, seconds, sink.sessions - sessions))
    finally:
        sink.stop()
        with psycopg.connect(make_conninfo(stack_db, dbname="postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{conninfo_to_dict(database_url)["dbname"]}" WITH (FORCE)')
    return summarize(combine(runs[POOLED.name]), combine(runs[ONE_PER_MAIL.name]), POOLED.pool_size)
