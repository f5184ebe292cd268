"""Spring-style `/actuator/health`: UP only when every dependency the service needs answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["UP", "DOWN"]


@dataclass(frozen=True)
class ComponentHealth:
    status: Status
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status}
        if self.details:
            body["details"] = self.details
        return body


Check = Callable[[], Awaitable[ComponentHealth]]


class HealthRegistry:
    """Named dependency checks, run concurrently, each bounded by a timeout."""

    def __init__(self, timeout_s: float) -> None:
        self._checks: dict[str, Check] = {}
        self._timeout_s = timeout_s

    def add(self, name: str, check: Check) -> None:
        self._checks[name] = check

    async def _run(self, name: str, check: Check) -> tuple[str, ComponentHealth]:
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(check(), self._timeout_s)
        except TimeoutError:
            result = ComponentHealth("DOWN", {"error": f"no answer within {self._timeout_s:g} s"})
        except Exception as exc:  # a failing check means DOWN, whatever it raised
            result = ComponentHealth("DOWN", {"error": f"{type(exc).__name__}: {exc}"})
        details = {**result.details, "latencyMs": round((time.perf_counter() - started) * 1000, 1)}
        return name, ComponentHealth(result.status, details)

    async def report(self) -> dict[str, Any]:
        results = await asyncio.gather(*(self._run(n, c) for n, c in self._checks.items()))
        components = {name: health.as_json() for name, health in results}
        status: Status = "UP" if all(h.status == "UP" for _, h in results) else "DOWN"
        return {"status": status, "components": components}
