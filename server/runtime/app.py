"""What every service app shares: metrics, health, error mapping, and the uvicorn entry point."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

import psycopg
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from psycopg_pool import PoolTimeout

from server import __version__
from server.runtime.api_keys import ApiKeys, read_api_keys
from server.runtime.auth import API_KEY_HEADER, authorize, require_api_keys
from server.runtime.body_limit import BodyLimit
from server.runtime.errors import (
    ConfigurationError,
    DependencyUnavailable,
    InvalidInput,
    RateLimited,
    ServiceError,
    Unauthenticated,
)
from server.runtime.health import HealthRegistry
from server.runtime.metrics import HttpMetrics, MetricsMiddleware, metrics_endpoint
from server.runtime.routing import StorableRoute
from server.runtime.settings import ServiceSettings
from server.runtime.storable import echoable

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def build_app(
    *, service: str, title: str, description: str, settings: ServiceSettings, lifespan: Lifespan,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, body_limits: dict[str, int] | None = None,
    requires_api_keys: bool = False,
) -> FastAPI:
    """A FastAPI app with `/metrics`, `/actuator/health`, API keys, body limits and the shared error mapping.

    Every router a service includes should be an `APIRouter(route_class=StorableRoute)`, so that what
    cannot be stored is refused before validation (`server.runtime.routing`).

    Bodies over `max_body_bytes` (or the path's own entry in `body_limits`) are refused with 413
    before they are read. Services add their dependency checks to `app.state.health` and their routers.
    `requires_api_keys` marks an API that callers use (not only health and metrics): on Kubernetes it
    raises ConfigurationError when no key is configured (`auth.require_api_keys`).
    """
    registry = CollectorRegistry()
    api_keys = ApiKeys(read_api_keys(settings.api_keys.get_secret_value(), settings.api_keys_file))
    if requires_api_keys:
        require_api_keys(service, settings, api_keys)
    app = FastAPI(title=title, description=description, version=__version__, lifespan=lifespan,
                  dependencies=[Depends(authorize)] if api_keys.enabled else [])
    app.router.route_class = StorableRoute  # the app's own routes; every service router names it too
    app.state.settings = settings
    app.state.api_keys = api_keys
    app.state.service = service
    app.state.metrics_registry = registry
    app.state.health = HealthRegistry(settings.dependency_timeout_s)
    app.add_middleware(BodyLimit, limits=body_limits or {}, default=max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=HttpMetrics(service, registry))
    app.add_route("/metrics", metrics_endpoint(registry), include_in_schema=False)

    @app.get("/actuator/health", tags=["health"], summary="Health of the service and its dependencies")
    async def health(request: Request) -> JSONResponse:
        report = await request.app.state.health.report()
        return JSONResponse(report, status_code=200 if report["status"] == "UP" else 503)

    install_error_handlers(app)
    return app


def _answer(content: object, status_code: int, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error answer that always encodes: what it quotes of the request (`echoable`) cannot fail it."""
    return JSONResponse(echoable(content), status_code=status_code, headers=headers)


def _unavailable(dependency: str, detail: str, retry_after_s: int) -> JSONResponse:
    return _answer({"detail": f"{dependency} unavailable: {detail}", "error": "DependencyUnavailable"}, 503,
                   {"Retry-After": str(retry_after_s)})


def install_error_handlers(app: FastAPI) -> None:
    """Map domain and infrastructure failures to HTTP status codes, in this one place.

    Every answer goes through `_answer`, so an error quoting an unencodable input (a lone surrogate,
    NaN, bytes that are not UTF-8) is still answered, with escapes, instead of failing as a 500.
    """

    @app.exception_handler(RequestValidationError)
    async def request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own 422 shape; its default handler fails on such inputs (UnicodeEncodeError, ValueError)
        return _answer({"detail": jsonable_encoder(echoable(exc.errors()))}, 422)

    @app.exception_handler(DependencyUnavailable)
    async def dependency_unavailable(_: Request, exc: DependencyUnavailable) -> JSONResponse:
        return _unavailable(exc.dependency, str(exc).split(": ", 1)[-1], exc.retry_after_s)

    @app.exception_handler(InvalidInput)
    async def invalid_input(_: Request, exc: InvalidInput) -> JSONResponse:
        detail = [{"loc": loc, "msg": msg, "type": "value_error"} for loc, msg in exc.problems]
        return _answer({"detail": detail or str(exc), "error": "InvalidInput"}, 422)

    @app.exception_handler(RateLimited)
    async def rate_limited(_: Request, exc: RateLimited) -> JSONResponse:
        return _answer({"detail": str(exc), "error": "RateLimited"}, 429,
                       {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})

    @app.exception_handler(Unauthenticated)
    async def unauthenticated(_: Request, exc: Unauthenticated) -> JSONResponse:
        return _answer({"detail": str(exc), "error": "Unauthenticated"}, 401,
                       {"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'})

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return _answer({"detail": str(exc), "error": type(exc).__name__}, exc.status_code)

    @app.exception_handler(psycopg.DataError)
    async def unstorable_value(_: Request, exc: psycopg.DataError) -> JSONResponse:
        # schemas refuse these first; this keeps any value they missed from becoming a 500
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid value"
        return _answer({"detail": f"a value cannot be stored: {first_line}", "error": "InvalidInput"}, 422)

    @app.exception_handler(psycopg.OperationalError)
    async def database_down(_: Request, exc: psycopg.OperationalError) -> JSONResponse:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "connection failed"
        return _unavailable("postgres", first_line, 2)

    @app.exception_handler(PoolTimeout)
    async def pool_timeout(_: Request, exc: PoolTimeout) -> JSONResponse:
        return _unavailable("postgres", "no connection available in time", 2)


S = TypeVar("S", bound=ServiceSettings)


def serve(create_app: Callable[[S], FastAPI], settings: S) -> None:
    """Run one service under uvicorn on the host and port its settings name.

    The processes' entry point: settings that do not let the service start end it with one log line
    saying what to set, and exit code 2.
    """
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        app = create_app(settings)
    except ConfigurationError as exc:
        logging.getLogger("server").critical("refusing to start: %s", exc)
        raise SystemExit(2) from None
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
