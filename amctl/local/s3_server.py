"""The local S3 server the broker keeps its records in: the part of the S3 API Tansu's object store uses, over
`amctl.local.objects.ObjectStore`, in memory or (`--directory`) on disk, with the store's retention applied every
`--trim-every` seconds.

Run as `python -m amctl.local.s3_server --port 30090 --bucket broker [--directory DIR] [--retain TOPIC=GROUP,…]`.
Requests are path-style (`/<bucket>/<key>`) and not authenticated: the server listens on the loopback interface
only. `GET /_stats` answers what the store holds and what retention dropped, as JSON.

Handled: GET/HEAD/PUT/DELETE of an object (`If-None-Match` and `If-Match` on reads and writes, `Range` on reads,
`x-amz-copy-source` on PUT), ListObjectsV2, DeleteObjects, and HEAD/PUT of the bucket. Every request is answered
whole in the event loop, one at a time: no reader sees half a write, and a conditional write cannot race another.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import email.utils
import json
import logging
import re
import signal
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import cast
from urllib.parse import parse_qs, unquote
from xml.sax.saxutils import escape

import httptools
import uvloop

from amctl.local.objects import ObjectStore, PreconditionFailed, RetentionPolicy, StoredObject

log = logging.getLogger("amctl.s3")

REASONS = {200: "OK", 204: "No Content", 206: "Partial Content", 304: "Not Modified", 400: "Bad Request",
           404: "Not Found", 405: "Method Not Allowed", 412: "Precondition Failed", 416: "Range Not Satisfiable",
           500: "Internal Server Error"}
LISTING_PAGE = 100_000
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
DELETE_KEY = re.compile(rb"<Key>(.*?)</Key>", re.S)


class Answer:
    """A response: status, headers, body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.status, self.headers, self.body = status, headers or {}, body


def error(status: int, code: str, message: str, resource: str = "") -> Answer:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{escape(message)}'
            f"</Message><Resource>{escape(resource)}</Resource></Error>").encode()
    return Answer(status, {"Content-Type": "application/xml"}, body)


def object_headers(stored: StoredObject) -> dict[str, str]:
    return {"ETag": stored.etag, "Last-Modified": email.utils.formatdate(stored.modified, usegmt=True),
            "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}


class S3Api:
    """What each request gets: one bucket, its objects in `store`."""

    def __init__(self, store: ObjectStore, bucket: str, requests: Counter[str]) -> None:
        self.store, self.bucket, self.requests = store, bucket, requests

    def handle(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> Answer:
        if path == "/_stats":
            return self.stats()
        self.requests[f"{method} {_kind(path, query)}"] += 1
        bucket, _, raw_key = path.lstrip("/").partition("/")
        if unquote(bucket) != self.bucket:
            return error(404, "NoSuchBucket", "The specified bucket does not exist", bucket)
        params = {name: values[-1] for name, values in parse_qs(query, keep_blank_values=True).items()}
        if not raw_key:
            return self.bucket_request(method, params, body)
        key = unquote(raw_key)
        if method in ("GET", "HEAD"):
            return self.read(key, headers, head=method == "HEAD")
        if method == "PUT":
            return self.write(key, headers, body)
        if method == "DELETE":
            self.store.delete(key)
            return Answer(204)
        return error(405, "MethodNotAllowed", f"{method} is not supported on an object", key)

    def bucket_request(self, method: str, params: dict[str, str], body: bytes) -> Answer:
        if method in ("HEAD", "PUT"):  # the bucket exists, and creating it again is harmless
            return Answer(200)
        if method == "GET" and params.get("list-type") == "2":
            try:
                return self.list(params)
            except ValueError:  # max-keys not a number, a continuation token not ours
                return error(400, "InvalidArgument", "max-keys or continuation-token is not valid")
        if method == "POST" and "delete" in params:
            return self.delete_many(body)
        return error(400, "NotImplemented", "only ListObjectsV2 and DeleteObjects are served on the bucket")

    def read(self, key: str, headers: dict[str, str], head: bool) -> Answer:
        stored = self.store.get(key)
        if stored is None:
            return error(404, "NoSuchKey", "The specified key does not exist.", key)
        answer_headers = object_headers(stored)
        if_match, if_none_match = headers.get("if-match"), headers.get("if-none-match")
        if if_match is not None and if_match not in ("*", stored.etag):
            return error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
        if if_none_match is not None and if_none_match in ("*", stored.etag):
            return Answer(304, answer_headers)
        data, status = stored.data, 200
        wanted = headers.get("range")
        if wanted is not None:
            match = RANGE.match(wanted.strip())
            if match is None or match.groups() == ("", ""):
                return error(416, "InvalidRange", "The requested range is not satisfiable")
            first, last = match.groups()
            size = len(data)
            start = int(first) if first else max(size - int(last), 0)
            end = min(int(last), size - 1) if first and last else size - 1
            if start >= size or start > end:
                return error(416, "InvalidRange", "The requested range is not satisfiable")
            answer_headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            data, status = data[start:end + 1], 206
        if head:
            answer_headers["Content-Length"] = str(len(data))
            return Answer(status, answer_headers)
        return Answer(status, answer_headers, data)

    def write(self, key: str, headers: dict[str, str], body: bytes) -> Answer:
        source = headers.get("x-amz-copy-source")
        if source is not None:
            source_bucket, _, source_key = unquote(source).lstrip("/").partition("/")
            copied = self.store.get(source_key) if source_bucket == self.bucket else None
            if copied is None:
                return error(404, "NoSuchKey", "The specified key does not exist.", source)
            body = copied.data
        try:
            etag = self.store.put(key, body, if_match=headers.get("if-match"),
                                  if_none_match=headers.get("if-none-match"))
        except PreconditionFailed:
            return error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold",
                         key)
        if source is not None:
            modified = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
            return Answer(200, {"Content-Type": "application/xml"},
                          f"<CopyObjectResult><LastModified>{modified}</LastModified><ETag>{escape(etag)}</ETag>"
                          "</CopyObjectResult>".encode())
        return Answer(200, {"ETag": etag})

    def list(self, params: dict[str, str]) -> Answer:
        token = params.get("continuation-token")
        start_after = base64.urlsafe_b64decode(token.encode()).decode() if token else params.get("start-after", "")
        prefix, delimiter = params.get("prefix", ""), params.get("delimiter", "")
        # S3 pages by 1,000; the broker asks for no size and lists a partition's batches on every fetch, so it
        # gets them in one page rather than one request per thousand
        max_keys = max(0, min(LISTING_PAGE, int(params.get("max-keys", LISTING_PAGE))))
        keys, prefixes, after = self.store.list(prefix, start_after, delimiter, max_keys)
        parts = ['<?xml version="1.0" encoding="UTF-8"?>\n'
                 '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
                 f"<Name>{escape(self.bucket)}</Name><Prefix>{escape(prefix)}</Prefix>",
                 f"<KeyCount>{len(keys) + len(prefixes)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>",
                 f"<IsTruncated>{'true' if after else 'false'}</IsTruncated>"]
        if delimiter:
            parts.append(f"<Delimiter>{escape(delimiter)}</Delimiter>")
        if token:
            parts.append(f"<ContinuationToken>{escape(token)}</ContinuationToken>")
        if after:
            parts.append(f"<NextContinuationToken>{base64.urlsafe_b64encode(after.encode()).decode()}"
                         "</NextContinuationToken>")
        parts.extend(self.store.listing_entry(key) for key in keys)
        for common in prefixes:
            parts.append(f"<CommonPrefixes><Prefix>{escape(common)}</Prefix></CommonPrefixes>")
        parts.append("</ListBucketResult>")
        return Answer(200, {"Content-Type": "application/xml"}, "".join(parts).encode())

    def delete_many(self, body: bytes) -> Answer:
        deleted = []
        for raw in DELETE_KEY.findall(body):
            key = raw.decode().replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace(
                "&apos;", "'").replace("&amp;", "&")
            self.store.delete(key)
            deleted.append(f"<Deleted><Key>{escape(key)}</Key></Deleted>")
        return Answer(200, {"Content-Type": "application/xml"},
                      ('<?xml version="1.0" encoding="UTF-8"?>\n<DeleteResult>' + "".join(deleted)
                       + "</DeleteResult>").encode())

    def stats(self) -> Answer:
        figures = {topic: asdict(f) for topic, f in self.store.figures().items()}
        body = {"objects": len(self.store), "durable": self.store.directory is not None, "topics": figures,
                "requests": dict(self.requests.most_common())}
        return Answer(200, {"Content-Type": "application/json"}, json.dumps(body).encode())


def _kind(path: str, query: str) -> str:
    """What a request is about, for the request counts: a listing, a record batch, a watermark, …"""
    if "list-type" in query:
        return "listing"
    if "delete" in query:
        return "bulk delete"
    name = path.rsplit("/", 1)[-1]
    if name.endswith(".batch"):
        return "batch"
    if "/offsets/" in path:
        return "offset commit"
    return name if name.endswith(".json") else "other"


class Connection(asyncio.Protocol):
    """One client connection: requests parsed by httptools, each answered in turn (keep-alive)."""

    def __init__(self, api: S3Api) -> None:
        self.api = api
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is one without subclassing it

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(error(400, "BadRequest", "malformed HTTP request"), keep_alive=False)

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        parsed = httptools.parse_url(self.url)
        path = parsed.path.decode("latin-1")
        query = parsed.query.decode("latin-1") if parsed.query else ""
        try:
            answer = self.api.handle(method, path, query, self.headers, b"".join(self.body))
        except Exception:  # an answer, not a dead connection: the client's retry may well succeed
            log.exception("s3: %s %s failed", method, path)
            answer = error(500, "InternalError", "the server failed this request")
        if method == "HEAD":
            answer.body = b""
        self._send(answer, keep_alive=self.parser.should_keep_alive())
        self._reset()

    def _send(self, answer: Answer, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        lines = [f"HTTP/1.1 {answer.status} {REASONS.get(answer.status, 'Unknown')}"]
        headers = answer.headers
        if "Content-Length" not in headers:
            headers["Content-Length"] = str(len(answer.body))
        if not keep_alive:
            headers["Connection"] = "close"
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + answer.body)
        if not keep_alive:
            self.transport.close()


async def trim_forever(store: ObjectStore, policy: RetentionPolicy, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        started = time.perf_counter()
        dropped = store.trim(policy)
        if dropped:
            log.debug("trimmed %d records in %.1f ms", dropped, (time.perf_counter() - started) * 1000)


async def serve(args: argparse.Namespace) -> None:
    store = ObjectStore(Path(args.directory) if args.directory else None)
    policy = RetentionPolicy.parse(args.retain, args.keep_for)
    loop = asyncio.get_running_loop()
    requests: Counter[str] = Counter()
    server = await loop.create_server(lambda: Connection(S3Api(store, args.bucket, requests)), args.host, args.port,
                                      reuse_address=True)
    where = f"in {args.directory}" if args.directory else "in memory"
    log.info("s3 server listening on %s:%d, bucket %r, %d objects %s; retention for %d topics", args.host,
             args.port, args.bucket, len(store), where, len(policy.readers))
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # every acknowledged write is already complete
        loop.add_signal_handler(signum, stopped.set)
    trimming = asyncio.create_task(trim_forever(store, policy, args.trim_every)) if policy.readers else None
    async with server:
        await stopped.wait()
    if trimming is not None:
        trimming.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m amctl.local.s3_server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--directory", help="keep the objects in files here (default: in memory)")
    parser.add_argument("--retain", action="append", default=[], metavar="TOPIC=GROUP[,GROUP…]",
                        help="drop a topic's records once every one of these groups committed past them")
    parser.add_argument("--keep-for", type=float, default=0.0, metavar="SECONDS",
                        help="keep every record at least this long, read or not")
    parser.add_argument("--trim-every", type=float, default=2.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvloop.run(serve(args))


if __name__ == "__main__":
    main()
