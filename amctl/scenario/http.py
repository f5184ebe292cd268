"""The scenario runner's view of the services: `call(service, method, path, json)` over httpx.

`mail-sink` is the local target's SMTP sink, read from its store: `GET /campaigns/{id}` lists the
mails received for a campaign, so a scenario can wait until they have arrived. `webhook-sink` is the
local webhook receiver, read the same way: `GET /hooks/{name}` lists the calls it answered on that path,
each with its `headers` and its `body` parsed as JSON.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

import httpx

from amctl.local import webhook_sink
from amctl.local.mail_sink import read_mails, store_path
from amctl.scenario.model import ScenarioError
from amctl.settings import AmctlSettings, Target

MAIL_SINK = "mail-sink"
WEBHOOK_SINK = "webhook-sink"
_CAMPAIGN_MAILS = re.compile(r"^/campaigns/([^/]+)$")
_HOOK_CALLS = re.compile(r"^/hooks/[^?#]+$")


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
        self.settings = settings

    def auth_headers(self) -> dict[str, str]:
        return self.settings.auth_headers()

    def template_variables(self) -> dict[str, str]:
        """What scenarios may use besides `run`: `webhook_sink_url`, the local receiver's base URL."""
        return {"webhook_sink_url": self.settings.url(self.settings.ports.webhook_sink)}

    def url(self, service: str, path: str) -> str:
        if service not in self.bases:
            raise ScenarioError(f"unknown service '{service}' (known: {', '.join(self.bases)}, {MAIL_SINK}, "
                                f"{WEBHOOK_SINK})")
        return self.bases[service] + path

    def call(self, service: str, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        if service == MAIL_SINK:
            return self._mails(method, path)
        if service == WEBHOOK_SINK:
            return self._hook_calls(method, path)
        try:
            response = self._client.request(method, self.url(service, path), json=json)
        except httpx.HTTPError as exc:
            return 0, f"cannot reach the {service} service at {self.bases[service]}: {exc}"
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text

    def _mails(self, method: str, path: str) -> tuple[int, Any]:
        if self.settings.target is not Target.LOCAL:
            return 0, "the mail sink is read on the local target only; on k8s open the mail catcher's web UI"
        match = _CAMPAIGN_MAILS.match(path)
        if method != "GET" or match is None:
            return 404, f"the mail sink answers GET /campaigns/{{id}} only, not {method} {path}"
        mails = read_mails(store_path(self.settings.state_dir), match.group(1))
        return 200, sorted((asdict(m) for m in mails), key=lambda m: m["rcpt_to"])

    def _hook_calls(self, method: str, path: str) -> tuple[int, Any]:
        if self.settings.target is not Target.LOCAL:
            return 0, "the webhook receiver runs on the local target only"
        if method != "GET" or _HOOK_CALLS.match(path) is None:
            return 404, f"the webhook receiver answers GET /hooks/{{name}} only, not {method} {path}"
        calls = webhook_sink.read_received(webhook_sink.store_path(self.settings.state_dir), path)
        return 200, [{"received_at": c.received_at, "status": c.status, "headers": {**c.headers, **c.webhook},
                      "body": c.json_body()} for c in calls]

    def close(self) -> None:
        self._client.close()
