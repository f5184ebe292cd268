"""The local target's webhook receiver: answers every call and keeps it, so the demo can show what destinations got.

Run as `python -m amctl.local.webhook_sink --port 30087 --store received.jsonl`. `POST /hooks/<anything>`
answers 200; `POST /status/<code>/<anything>` answers that code (a destination that fails, to watch the
retries); `GET /healthz` answers 200. Each POST is one JSON line (time, path, the answer it got, the
`webhook-*` headers, the other headers, the body as text); `read_received` reads them back for
`amctl destination received`, and `verify` says whether a kept call's signature holds for a secret.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

MAX_BODY_BYTES = 1 << 20  # a Segment-shaped track call is well under 2 KB; anything this large is not one
# Standard Webhooks' tolerance between the signed timestamp and the moment the call arrives
TIMESTAMP_TOLERANCE = timedelta(minutes=5)
WEBHOOK_HEADER_PREFIX = "webhook-"
SECRET_PREFIX = "whsec_"


@dataclass(frozen=True)
class ReceivedRequest:
    """One call the receiver answered, as kept in its store."""

    received_at: str
    method: str
    path: str
    status: int  # what the receiver answered
    webhook: dict[str, str]  # webhook-id, webhook-timestamp, webhook-signature
    headers: dict[str, str]  # every other header
    body: str

    def json_body(self) -> Any:
        """The body parsed as JSON, or the text itself when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return self.body


Keep = Callable[[ReceivedRequest], None]


class RequestStore:
    """Appends every call to a JSON-lines file (the receiver's event loop is its only writer)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def keep(self, request: ReceivedRequest) -> None:
        with self.path.open("a") as out:
            out.write(json.dumps(asdict(request)) + "\n")


def create_app(keep: Keep) -> Starlette:
    """The receiver's ASGI app; `keep` is handed every POST it answers."""

    async def answer(request: Request, status: int) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return PlainTextResponse("body too large", status_code=413)
        webhook = {k: v for k, v in request.headers.items() if k.startswith(WEBHOOK_HEADER_PREFIX)}
        others = {k: v for k, v in request.headers.items() if not k.startswith(WEBHOOK_HEADER_PREFIX)}
        keep(ReceivedRequest(received_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
                             method=request.method, path=request.url.path, status=status, webhook=webhook,
                             headers=others, body=body.decode(errors="replace")))
        return JSONResponse({"received": status < 300, "status": status}, status_code=status)

    async def hook(request: Request) -> Response:
        return await answer(request, 200)

    async def status(request: Request) -> Response:
        code = request.path_params["code"]
        if not 200 <= code <= 599:
            return PlainTextResponse(f"/status/{code}: the code must be between 200 and 599", status_code=404)
        return await answer(request, code)

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[
        Route("/hooks/{rest:path}", hook, methods=["POST"]),
        Route("/status/{code:int}/{rest:path}", status, methods=["POST"]),
        Route("/status/{code:int}", status, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ])


def store_path(state_dir: Path) -> Path:
    """Where the local stack's receiver keeps the calls it answered."""
    return state_dir / "webhooks" / "received.jsonl"


def read_received(store: Path, path: str | None = None, limit: int | None = None) -> list[ReceivedRequest]:
    """The calls the receiver kept, oldest first: only those to `path` when given, the newest `limit` of them."""
    if not store.exists():
        return []
    kept = [ReceivedRequest(**json.loads(line)) for line in store.read_text().splitlines() if line.strip()]
    chosen = [r for r in kept if path is None or r.path == path]
    return chosen[-limit:] if limit is not None and limit > 0 else chosen


def count_received(store: Path) -> int:
    """How many calls the receiver has kept (for `amctl status`)."""
    if not store.exists():
        return 0
    with store.open("rb") as lines:
        return sum(1 for _ in lines)


def signer(secret: str) -> Webhook:
    """The Standard Webhooks signer of a `whsec_…` secret; ValueError when it is not one."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)  # the library skips what is not base64
        webhook: Webhook | None = Webhook(secret) if encoded != secret else None
    except (ValueError, EmptyWebhookSecretError):
        webhook = None
    if webhook is None:
        raise ValueError("a signing secret is whsec_ followed by base64, as the destination's create "
                         "or rotate-secret showed it")
    return webhook


def verify(request: ReceivedRequest, webhook: Webhook) -> str:
    """Whether a kept call was signed with `webhook`'s secret the Standard Webhooks way: `verified`, `unsigned`,
    `bad signature`, or `stale timestamp` (signed more than 5 minutes from when it arrived).

    Judged against the moment the call arrived, not now, so an old call still says whether it verified.
    """
    msg_id = request.webhook.get("webhook-id")
    stamp = request.webhook.get("webhook-timestamp")
    signatures = request.webhook.get("webhook-signature")
    if not (msg_id and stamp and signatures):
        return "unsigned"
    try:
        signed_at = datetime.fromtimestamp(float(stamp), tz=UTC)
    except (ValueError, OverflowError):
        return "bad signature"
    expected = base64.b64decode(webhook.sign(msg_id, signed_at, request.body).partition(",")[2])
    matches = False
    for versioned in signatures.split(" "):
        version, _, signature = versioned.partition(",")
        try:
            decoded = base64.b64decode(signature, validate=True)
        except ValueError:
            continue
        matches = matches or (version == "v1" and hmac.compare_digest(expected, decoded))
    if not matches:
        return "bad signature"
    arrived = datetime.fromisoformat(request.received_at)
    return "verified" if abs(arrived - signed_at) <= TIMESTAMP_TOLERANCE else "stale timestamp"


@contextmanager
def running(app: Starlette, host: str, port: int, timeout_s: float = 10.0) -> Iterator[str]:
    """Serve `app` on host:port in a background thread until the block ends; yields the base URL."""
    # uvicorn leaves signal handlers alone outside the main thread, so the caller keeps its own
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                         lifespan="off"))
    thread = threading.Thread(target=server.run, name=f"webhook-receiver-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the webhook receiver did not start on {host}:{port}")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)


def main() -> None:
    parser = argparse.ArgumentParser(description="Local webhook receiver that keeps every call it answers")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", type=Path, required=True, help="JSON-lines file to append the calls to")
    args = parser.parse_args()
    print(f"webhook receiver listening on {args.host}:{args.port}, keeping calls in {args.store}", flush=True)
    uvicorn.run(create_app(RequestStore(args.store).keep), host=args.host, port=args.port, log_level="warning",
                access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
