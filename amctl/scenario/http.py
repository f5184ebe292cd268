"""The scenario runner's view of the services: `call(service, method, path, json)` over httpx."""

from __future__ import annotations

from typing import Any

import httpx

from amctl.settings import AmctlSettings


class ServiceHttp:
    """Plain JSON calls to the Segment (`segment`), Ingestion (`ingestion`) and Communication
    (`communication`) APIs of the target in `settings`."""

    def __init__(self, settings: AmctlSettings, timeout_s: float = 10.0) -> None:
        ports = settings.ports
        self.bases = {
            "segment": settings.url(ports.segment_api),
            "ingestion": settings.url(ports.ingestion_api),
            "communication": settings.url(ports.communication_api),
            "rule-engine": settings.url(ports.rule_engine),
        }
        self._client = httpx.Client(timeout=timeout_s, headers=settings.auth_headers())

    def url(self, service: str, path: str) -> str:
        if service not in self.bases:
            raise ValueError(f"unknown service '{service}' (known: {', '.join(self.bases)})")
        return self.bases[service] + path

    def call(self, service: str, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        try:
            response = self._client.request(method, self.url(service, path), json=json)
        except httpx.HTTPError as exc:
            return 0, f"cannot reach the {service} service at {self.bases[service]}: {exc}"
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text

    def close(self) -> None:
        self._client.close()
