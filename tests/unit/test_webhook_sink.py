"""The local webhook receiver as a real server on a free port, called the way the delivery worker calls
destinations (server.stores.webhooks), and `amctl destination received` reading what it kept."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from amctl.local import processes
from amctl.local.webhook_sink import (
    RequestStore,
    count_received,
    create_app,
    read_received,
    running,
    signer,
    store_path,
    verify,
)
from server.runtime.secrets import new_signing_secret
from server.stores.webhooks import DestinationGuard, Outcome, WebhookClient, signature_headers
from tests.cli import invoke, one_error

pytestmark = pytest.mark.unit
BODY = json.dumps({"type": "track", "event": "Audience Entered", "userId": "ann", "messageId": "m-1"})


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The receiver serving on a free port, keeping calls where `amctl` reads them for this state dir."""
    store = store_path(tmp_path)
    with running(create_app(RequestStore(store).keep), "127.0.0.1", processes.free_port()) as url:
        yield url, store


def call(url: str, secrets: list[str], message_id: str = "m-1") -> Outcome:
    async def one() -> Outcome:
        client = WebhookClient(DestinationGuard(block_private=False), timeout_s=5)
        try:
            return (await client.call(url, secrets, message_id, BODY, {"authorization": "Bearer t"})).outcome
        finally:
            await client.aclose()

    return asyncio.run(one())


def test_posts_under_hooks_are_kept_and_answered_200_and_status_paths_answer_their_code(
        receiver: tuple[str, Path]) -> None:
    url, store = receiver
    secret = new_signing_secret()
    assert call(f"{url}/hooks/crm", [secret]) is Outcome.DELIVERED
    assert call(f"{url}/status/503/hooks/crm", [secret], "m-2") is Outcome.RETRY
    assert call(f"{url}/status/410/hooks/crm", [secret], "m-3") is Outcome.FAIL
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert httpx.get(f"{url}/hooks/crm").status_code == 405
    assert httpx.post(f"{url}/elsewhere").status_code == 404
    assert httpx.post(f"{url}/status/42/hooks/crm").status_code == 404
    kept = read_received(store)
    assert [(r.path, r.status) for r in kept] == [("/hooks/crm", 200), ("/status/503/hooks/crm", 503),
                                                  ("/status/410/hooks/crm", 410)]
    first = kept[0]
    assert set(first.webhook) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert first.webhook["webhook-id"] == "m-1" and first.body == BODY and first.json_body()["userId"] == "ann"
    assert first.headers["authorization"] == "Bearer t" and "webhook-id" not in first.headers
    assert [r.path for r in read_received(store, "/hooks/crm")] == ["/hooks/crm"]
    assert [r.webhook["webhook-id"] for r in read_received(store, limit=2)] == ["m-2", "m-3"]
    assert count_received(store) == 3


def test_verify_judges_the_signature_against_the_moment_the_call_arrived(receiver: tuple[str, Path]) -> None:
    url, store = receiver
    old, new = new_signing_secret(), new_signing_secret()
    call(f"{url}/hooks/crm", [new, old])  # during a rotation: signed with both
    httpx.post(f"{url}/hooks/crm", content=BODY)
    signed, unsigned = read_received(store)
    assert verify(signed, signer(new)) == verify(signed, signer(old)) == "verified"
    assert verify(signed, signer(new_signing_secret())) == "bad signature"
    assert verify(replace(signed, body=BODY.replace("ann", "eve")), signer(new)) == "bad signature"
    assert verify(unsigned, signer(new)) == "unsigned"
    late = datetime.fromisoformat(signed.received_at) - timedelta(minutes=6)
    stale = replace(signed, webhook=signature_headers([new], "m-1", BODY, late))
    assert verify(stale, signer(new)) == "stale timestamp"
    arrived_long_ago = replace(signed, received_at=(datetime.now(UTC) - timedelta(days=3)).isoformat(),
                               webhook=signature_headers([new], "m-1", BODY, datetime.now(UTC) - timedelta(days=3)))
    assert verify(arrived_long_ago, signer(new)) == "verified"  # what `standardwebhooks` would now call too old
    with pytest.raises(ValueError, match="whsec_"):
        signer("whsec_")


def test_received_lists_the_calls_and_whether_each_verifies(receiver: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = receiver
    secret = new_signing_secret()
    call(f"{url}/hooks/crm", [secret])
    call(f"{url}/hooks/ads", [new_signing_secret()], "m-2")
    env = {"AMCTL_STATE_DIR": str(tmp_path), "COLUMNS": "200"}
    listed = invoke("destination", "received", "--secret", secret, "--json", env=env)
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["path"], r["signature"]) for r in rows] == [("/hooks/crm", "verified"), ("/hooks/ads", "bad signature")]
    table = invoke("destination", "received", "--path", "/hooks/crm", "--secret", secret, env=env)
    assert table.exit_code == 0 and "verified" in table.stdout and "/hooks/ads" not in table.stdout
    assert "Audience Entered" in table.stdout and "ann" in table.stdout
    plain = json.loads(invoke("destination", "received", "--limit", "1", "--json", env=env).stdout)
    assert [r["path"] for r in plain] == ["/hooks/ads"] and "signature" not in plain[0]
    none = invoke("destination", "received", "--path", "/hooks/none", env=env)
    assert none.exit_code == 0 and "no calls to /hooks/none yet" in none.stderr
    bad = invoke("destination", "received", "--secret", "not-a-secret!", env=env)
    assert bad.exit_code == 2 and "--secret: a signing secret is whsec_" in one_error(bad.stderr)
    remote = invoke("--target", "k8s", "destination", "received", env=env)
    assert remote.exit_code == 1 and "local target only" in one_error(remote.stderr)
