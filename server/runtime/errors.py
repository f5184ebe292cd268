"""The exceptions services raise; `install_error_handlers` maps them to HTTP in one place."""

from __future__ import annotations


class ConfigurationError(Exception):
    """The settings do not let the service start; the message says what to set (never a secret)."""


class ServiceError(Exception):
    """Base of every expected failure a service reports to its caller."""

    status_code = 500


class Unauthenticated(ServiceError):
    """The request carries no API key, or one the service does not know."""

    status_code = 401


class Forbidden(ServiceError):
    """The API key is known but its scope does not cover the operation."""

    status_code = 403


class NotFound(ServiceError):
    """The addressed resource does not exist."""

    status_code = 404


class Conflict(ServiceError):
    """The request conflicts with current state (duplicate name, stale version)."""

    status_code = 409


class PreconditionFailed(ServiceError):
    """An If-Match or version precondition did not hold."""

    status_code = 412


class InvalidInput(ServiceError):
    """The request is well-formed JSON but violates a rule of the domain.

    `problems` are (location, message) pairs, answered in FastAPI's 422 shape.
    """

    status_code = 422

    def __init__(self, message: str, problems: list[tuple[list[str | int], str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class PayloadTooLarge(ServiceError):
    """The request body is over the size the endpoint accepts."""

    status_code = 413


class RateLimited(ServiceError):
    """The client sent more than its rate allows; it may retry after `retry_after_s`."""

    status_code = 429

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"rate limit exceeded; retry after {retry_after_s:.2f} s")
        self.retry_after_s = retry_after_s


class DependencyUnavailable(ServiceError):
    """A store or the broker did not answer in time; the caller should retry later."""

    status_code = 503

    def __init__(self, dependency: str, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(f"{dependency} unavailable: {detail}")
        self.dependency = dependency
        self.retry_after_s = retry_after_s
