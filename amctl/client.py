"""The typed HTTP client amctl uses to talk to the platform's services (and nothing else does)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from amctl.errors import AmctlError
from amctl.settings import AmctlSettings


class ApiError(AmctlError):
    """A call that failed; the message is one line a user can act on, `details` what the service listed."""

    def __init__(self, message: str, status: int | None = None, details: list[str] | None = None) -> None:
        super().__init__(message, hint=_hint(status), details=details or [])
        self.status = status


def _hint(status: int | None) -> str:
    """What to do next, for the failures a user can fix by themselves."""
    if status == 401:
        return "set AMCTL_API_KEY to an API key the service accepts"
    if status == 403:
        return "use an API key with the scope named above (AMCTL_API_KEY)"
    return ""


def _problems(body: Any) -> tuple[str, list[str]]:
    """The error line and the detail lines of a refusal: a 422's first problem, with its path, is the line."""
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):
        lines = [_problem(d) for d in detail]
        if len(lines) <= 1:  # one problem: the line says it all
            return (lines[0] if lines else "the request was rejected"), []
        return f"{lines[0]} (and {len(lines) - 1} more, above)", lines
    return str(detail), []


def _problem(detail: Any) -> str:
    """One problem as `path: message` (`rules.all[0].segment: no segment …`, `name: Field required`)."""
    if not isinstance(detail, dict):
        return str(detail)
    message, loc = str(detail.get("msg", detail)), detail.get("loc")
    parts = list(loc) if isinstance(loc, list) else []
    if parts[:1] == ["body"]:  # the body is where nearly every problem is: its fields are named alone
        parts = parts[1:]
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
    if not path or message.startswith(f"{path}:"):  # the rule language's messages name their path already
        return message
    return f"{path}: {message}"


DEFAULT_WAIT_S = 2.0  # how long the Segment API waits for `after` when no `wait` is given


class NotApplied(ApiError):
    """A read with `after` answered 202: the service has not applied that event to the user yet."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 202)
        self.hint = "ask again, or wait longer with --wait (at most 10 s)"


class ServiceClient:
    """One service's base URL, timeouts, and the mapping of failures to `ApiError`."""

    name = "service"

    def __init__(self, base_url: str, timeout_s: float = 10.0, headers: dict[str, str] | None = None) -> None:
        self.base_url, self.timeout_s = base_url, timeout_s
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s, headers=headers or {})

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.answer(method, path, **kwargs)[1]

    def answer(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """The status and JSON body of a call that succeeded (None for an empty body)."""
        response = self._send(method, path, stream=False, **kwargs)
        if response.status_code == 204 or not response.content:
            return response.status_code, None
        return response.status_code, response.json()

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """An answer whose body is read as it arrives (a refusal is an ApiError before it is yielded)."""
        response = self._send(method, path, stream=True, **kwargs)
        try:
            yield response
        finally:
            response.close()

    def _send(self, method: str, path: str, stream: bool, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.send(self._http.build_request(method, path, **kwargs), stream=stream)
        except httpx.HTTPError as exc:
            raise self._unanswered(exc) from None
        if response.status_code >= 400:
            response.read()
            response.close()
            try:
                message, details = _problems(response.json())
            except ValueError:
                message, details = response.text or response.reason_phrase, []
            raise ApiError(f"{self.name}: {message} (HTTP {response.status_code})", response.status_code, details)
        return response

    def _unanswered(self, exc: httpx.HTTPError) -> ApiError:
        if isinstance(exc, httpx.ConnectError):
            return ApiError(f"cannot reach the {self.name} at {self.base_url} — is the stack up? (amctl up)")
        if isinstance(exc, httpx.TimeoutException):
            return ApiError(f"the {self.name} at {self.base_url} did not answer in time")
        reason = str(exc) or type(exc).__name__  # the connection broke mid-answer, or the answer was not HTTP
        return ApiError(f"the {self.name} at {self.base_url} failed to answer: {reason}")

    def close(self) -> None:
        self._http.close()


@dataclass(frozen=True)
class MemberExport:
    """A segment export as it arrives: the member count the service gave when it started (None if it
    gave none) and the body's lines, each with its line end."""

    total: int | None
    lines: Iterator[bytes]


class SegmentClient(ServiceClient):
    name = "Segment API"

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/api/segments", json=body)  # type: ignore[no-any-return]

    def list_segments(self, segment_type: str | None, status: str | None, limit: int, offset: int) -> dict[str, Any]:
        params = {k: v for k, v in {"type": segment_type, "status": status, "limit": limit, "offset": offset}.items()
                  if v is not None}
        return self.request("GET", "/api/segments", params=params)  # type: ignore[no-any-return]

    def get(self, segment_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/segments/{segment_id}")  # type: ignore[no-any-return]

    def update(self, segment_id: str, body: dict[str, Any], if_match: int | None = None) -> dict[str, Any]:
        headers = {"If-Match": f'W/"{if_match}"'} if if_match is not None else {}
        return self.request("PUT", f"/api/segments/{segment_id}", json=body,  # type: ignore[no-any-return]
                            headers=headers)

    def delete(self, segment_id: str) -> None:
        self.request("DELETE", f"/api/segments/{segment_id}")

    def preview(self, rules: dict[str, Any], sample_size: int) -> dict[str, Any]:
        return self.request("POST", "/api/segments/preview",  # type: ignore[no-any-return]
                            json={"rules": rules, "sampleSize": sample_size})

    def members(self, segment_id: str, limit: int, cursor: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        return self.request("GET", f"/api/segments/{segment_id}/members", params=params)  # type: ignore[no-any-return]

    def change_members(self, segment_id: str, add: list[str], remove: list[str]) -> dict[str, Any]:
        return self.request("POST", f"/api/segments/{segment_id}/members",  # type: ignore[no-any-return]
                            json={"add": add, "remove": remove})

    @contextmanager
    def export_members(self, segment_id: str, fmt: str, traits: Sequence[str]) -> Iterator[MemberExport]:
        """`GET /api/segments/{id}/members/export`, streamed; a body that breaks off is an ApiError."""
        params = {"format": fmt, **({"traits": ",".join(traits)} if traits else {})}
        with self.stream("GET", f"/api/segments/{segment_id}/members/export", params=params) as response:
            total = response.headers.get("X-Total-Count", "")
            yield MemberExport(int(total) if total.isdigit() else None, self._lines(response))

    def _lines(self, response: httpx.Response) -> Iterator[bytes]:
        pending = b""
        try:
            for chunk in response.iter_bytes():
                pending += chunk
                end = pending.rfind(b"\n") + 1
                yield from (line + b"\n" for line in pending[:end].split(b"\n")[:-1])
                pending = pending[end:]
        except httpx.HTTPError as exc:
            raise self._unanswered(exc) from None
        if pending:
            yield pending

    def stats(self, segment_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/segments/{segment_id}/stats")  # type: ignore[no-any-return]

    def overlap(self, segment_ids: Sequence[str]) -> dict[str, Any]:
        """Each segment's size, the users in all of them and in every pair."""
        return self.request("POST", "/api/segments/overlap",  # type: ignore[no-any-return]
                            json={"segmentIds": list(segment_ids)})

    def history(self, segment_id: str, since: str | None, until: str | None) -> dict[str, Any]:
        """Entries, exits and size per hour; the service defaults to the last 24 hours."""
        params = {k: v for k, v in {"from": since, "to": until}.items() if v is not None}
        return self.request("GET", f"/api/segments/{segment_id}/history",  # type: ignore[no-any-return]
                            params=params)

    def breakdown(self, segment_id: str, trait: str, limit: int) -> dict[str, Any]:
        """The members counted by the value of one trait, the most common values first."""
        return self.request("GET", f"/api/segments/{segment_id}/breakdown",  # type: ignore[no-any-return]
                            params={"trait": trait, "limit": limit})

    def user_segments(self, user_id: str, after: str | None = None, wait_s: float | None = None) -> dict[str, Any]:
        """The user's segments (by its id or a linked anonymous id); with `after`, once that event is applied."""
        return self._user_read(f"/api/users/{user_id}/segments", after, wait_s)

    def user_profile(self, user_id: str, after: str | None = None, wait_s: float | None = None) -> dict[str, Any]:
        """The user's profile with its aliases; with `after`, once that event is applied (else NotApplied)."""
        return self._user_read(f"/api/users/{user_id}/profile", after, wait_s)

    def explain(self, user_id: str, segment_id: str, after: str | None = None,
                wait_s: float | None = None) -> dict[str, Any]:
        """Why the user is (or is not) in the segment: the rule evaluated on its stored profile, the stored
        membership and the reason it entered for."""
        return self._user_read(f"/api/users/{user_id}/segments/{segment_id}/explain", after, wait_s)

    def _user_read(self, path: str, after: str | None, wait_s: float | None) -> dict[str, Any]:
        params = {k: v for k, v in {"after": after, "wait": wait_s}.items() if v is not None}
        # the service waits up to `wait` before it answers: give the call that much more time
        waits = (wait_s if wait_s is not None else DEFAULT_WAIT_S) if after is not None else 0.0
        status, body = self.answer("GET", path, params=params, timeout=self.timeout_s + waits)
        if status == 202:
            raise NotApplied(f"{self.name}: {body.get('detail') if isinstance(body, dict) else body}")
        return body  # type: ignore[no-any-return]

    def delete_user(self, user_id: str) -> Any:
        """Ask for the user's erasure (profile, memberships, aliases); the rule engine carries it out."""
        return self.request("DELETE", f"/api/users/{user_id}")


class IngestionClient(ServiceClient):
    name = "Ingestion API"

    def send(self, event: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/api/events", json=event)  # type: ignore[no-any-return]

    def send_batch(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        return self.request("POST", "/api/events/batch", json={"events": events})  # type: ignore[no-any-return]

    def identify(self, user_id: str, anonymous_id: str, traits: dict[str, Any]) -> dict[str, Any]:
        """Link `anonymous_id` to `user_id` (202); a link the service refuses (409) is one ApiError line."""
        try:
            body = self.request("POST", "/api/identify",
                                json={"userId": user_id, "anonymousId": anonymous_id, "traits": traits})
        except ApiError as exc:
            if exc.status != 409:
                raise
            raise ApiError(f"cannot link {anonymous_id} to {user_id}: {exc.message}", 409) from None
        return body if isinstance(body, dict) else {}


class CommunicationClient(ServiceClient):
    name = "Communication API"

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/api/campaigns", json=body)  # type: ignore[no-any-return]

    def list_campaigns(self, status: str | None, segment_id: str | None, limit: int, offset: int) -> dict[str, Any]:
        params = {k: v for k, v in {"status": status, "segmentId": segment_id, "limit": limit,
                                    "offset": offset}.items() if v is not None}
        return self.request("GET", "/api/campaigns", params=params)  # type: ignore[no-any-return]

    def get(self, campaign_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/campaigns/{campaign_id}")  # type: ignore[no-any-return]

    def cancel(self, campaign_id: str) -> dict[str, Any]:
        return self.request("POST", f"/api/campaigns/{campaign_id}/cancel")  # type: ignore[no-any-return]

    def deliveries(self, campaign_id: str, status: str | None, limit: int, cursor: str | None) -> dict[str, Any]:
        params = {k: v for k, v in {"status": status, "limit": limit, "cursor": cursor}.items() if v is not None}
        return self.request("GET", f"/api/campaigns/{campaign_id}/deliveries",  # type: ignore[no-any-return]
                            params=params)

    def list_suppressions(self, reason: str | None, limit: int, cursor: str | None) -> dict[str, Any]:
        """One page of the suppression list, in address order."""
        params = {k: v for k, v in {"reason": reason, "limit": limit, "cursor": cursor}.items() if v is not None}
        return self.request("GET", "/api/suppressions", params=params)  # type: ignore[no-any-return]

    def get_suppression(self, address: str) -> dict[str, Any]:
        """The address's entry; an ApiError with status 404 when it is not suppressed."""
        return self.request("GET", _suppression_path(address))  # type: ignore[no-any-return]

    def add_suppression(self, address: str, reason: str | None, detail: str | None) -> tuple[dict[str, Any], bool]:
        """The entry, and whether this call added it (False: it was suppressed already and stays as it was)."""
        body = {k: v for k, v in {"address": address, "reason": reason, "detail": detail}.items() if v is not None}
        status, entry = self.answer("POST", "/api/suppressions", json=body)
        return entry, status == 201

    def remove_suppression(self, address: str) -> None:
        """Mail the address again (needs an admin key)."""
        self.request("DELETE", _suppression_path(address))


def _suppression_path(address: str) -> str:
    # percent-encoded whole: a local part may hold '/', '?', '#' or '%'
    return f"/api/suppressions/{urllib.parse.quote(address, safe='@+')}"


class DestinationClient(ServiceClient):
    """The destinations of the Communication API (every call needs the write scope)."""

    name = "Communication API"

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/api/destinations", json=body)  # type: ignore[no-any-return]

    def list_destinations(self, limit: int, offset: int) -> dict[str, Any]:
        return self.request("GET", "/api/destinations",  # type: ignore[no-any-return]
                            params={"limit": limit, "offset": offset})

    def get(self, destination_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/destinations/{destination_id}")  # type: ignore[no-any-return]

    def update(self, destination_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("PUT", f"/api/destinations/{destination_id}", json=body)  # type: ignore[no-any-return]

    def delete(self, destination_id: str) -> None:
        self.request("DELETE", f"/api/destinations/{destination_id}")

    def rotate_secret(self, destination_id: str, grace_s: int) -> dict[str, Any]:
        return self.request("POST", f"/api/destinations/{destination_id}/rotate-secret",  # type: ignore[no-any-return]
                            json={"graceSeconds": grace_s})

    def test(self, destination_id: str) -> dict[str, Any]:
        return self.request("POST", f"/api/destinations/{destination_id}/test")  # type: ignore[no-any-return]

    def deliveries(self, destination_id: str, status: str | None, user_id: str | None, limit: int,
                   cursor: str | None) -> dict[str, Any]:
        params = {k: v for k, v in {"status": status, "userId": user_id, "limit": limit, "cursor": cursor}.items()
                  if v is not None}
        return self.request("GET", f"/api/destinations/{destination_id}/deliveries",  # type: ignore[no-any-return]
                            params=params)

    def replay(self, destination_id: str, since: str, until: str | None, failed_only: bool) -> dict[str, Any]:
        body = {"from": since, "failedOnly": failed_only, **({"to": until} if until else {})}
        return self.request("POST", f"/api/destinations/{destination_id}/replay",  # type: ignore[no-any-return]
                            json=body)


def segment_client(settings: AmctlSettings) -> SegmentClient:
    return SegmentClient(settings.url(settings.ports.segment_api), headers=settings.auth_headers())


def ingestion_client(settings: AmctlSettings) -> IngestionClient:
    return IngestionClient(settings.url(settings.ports.ingestion_api), headers=settings.auth_headers())


def communication_client(settings: AmctlSettings) -> CommunicationClient:
    return CommunicationClient(settings.url(settings.ports.communication_api), headers=settings.auth_headers())


def destination_client(settings: AmctlSettings) -> DestinationClient:
    return DestinationClient(settings.url(settings.ports.communication_api), headers=settings.auth_headers())
