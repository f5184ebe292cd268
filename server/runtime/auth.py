"""The API-key check every service shares; off unless keys are configured (see `api_keys`).

What an operation needs: GET/HEAD = read, any other method = write, unless the route says
otherwise with `openapi_extra={REQUIRED_SCOPE: "admin"}` (shown in the OpenAPI document).
`/actuator/health`, `/metrics`, the API docs and the unsubscribe link are always open. On Kubernetes
the APIs refuse to start without keys (`require_api_keys`), unless AM_ALLOW_ANONYMOUS opts out on purpose.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader

from server.runtime.api_keys import ApiKeys, Principal, Scope
from server.runtime.errors import ConfigurationError, Forbidden, Unauthenticated
from server.runtime.settings import Environment, ServiceSettings

API_KEY_HEADER = "X-API-Key"
REQUIRED_SCOPE = "x-required-scope"
# the one-click unsubscribe link: recipients follow it from a mail, with no key (its token is the credential)
OPEN_PATHS = frozenset({"/actuator/health", "/unsubscribe/{token}"})
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
log = logging.getLogger("server.auth")


def require_api_keys(service: str, settings: ServiceSettings, keys: ApiKeys) -> None:
    """On Kubernetes an API does not run open: ConfigurationError without keys, unless AM_ALLOW_ANONYMOUS is set."""
    if keys.enabled or settings.environment is not Environment.K8S:
        return
    if settings.allow_anonymous:
        log.warning("%s runs without API keys because AM_ALLOW_ANONYMOUS is set: every caller may do everything",
                    service)
        return
    raise ConfigurationError(
        f"{service}: no API key configured, and on Kubernetes the APIs do not run without one; set AM_API_KEYS_FILE "
        "to a file of key:scope lines (amctl up --target k8s mounts one from its Secret) or AM_API_KEYS=key:scope,... "
        "(AM_ALLOW_ANONYMOUS=1 runs open on purpose)")


def required_scope(request: Request) -> Scope | None:
    """The scope the matched operation needs; None for the open ones."""
    route = request.scope.get("route")
    path = getattr(route, "path", "")
    if path in OPEN_PATHS:
        return None
    declared = (route.openapi_extra or {}).get(REQUIRED_SCOPE) if isinstance(route, APIRoute) else None
    if declared:
        return Scope.named(declared)
    return Scope.READ if request.method in _READ_METHODS else Scope.WRITE


_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                       description="An API key; its scope (read, write, admin) decides what it may do")


async def authorize(request: Request, presented: Annotated[str | None, Depends(_header)]) -> None:
    """App-wide dependency: 401 without a known key, 403 when its scope is too small."""
    needed = required_scope(request)
    if needed is None:
        return
    keys: ApiKeys = request.app.state.api_keys
    if not presented:
        raise Unauthenticated(f"missing API key: send one in the {API_KEY_HEADER} header")
    principal = keys.authenticate(presented)
    if principal is None:
        raise Unauthenticated("unknown API key")
    request.state.principal = principal
    if principal.scope < needed:
        route = getattr(request.scope.get("route"), "path", request.url.path)
        raise Forbidden(f"{request.method} {route} needs scope '{needed.label}'; "
                        f"this key (id {principal.key_id}) has '{principal.scope.label}'")


def caller_id(request: Request) -> str | None:
    """The authenticated key's id, for per-client accounting; None when keys are off."""
    principal: Principal | None = getattr(request.state, "principal", None)
    return f"key:{principal.key_id}" if principal else None
