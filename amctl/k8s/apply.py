"""Server-side apply of rendered manifests, and the generated Secret the manifests reference."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable

from amctl.k8s.cluster import Cluster
from amctl.k8s.render import SECRET_NAME, Manifest, describe
from server.runtime.secrets import new_key

FIELD_MANAGER = "amctl"
API_KEYS_ENTRY = "api-keys"
SECRETS_KEY_ENTRY = "secrets-key"  # AM_SECRETS_KEY: seals destination secrets; replacing it loses them
API_KEY_SCOPES = ("read", "write", "admin")


def _password() -> str:
    return secrets.token_urlsafe(24)


def _api_keys() -> str:
    """One generated key per scope, as the `key:scope` lines the APIs read from AM_API_KEYS_FILE."""
    return "".join(f"{secrets.token_urlsafe(32)}:{scope}\n" for scope in API_KEY_SCOPES)


# every entry of the Secret, and how a missing one is generated
SECRET_VALUES: dict[str, Callable[[], str]] = {
    "postgres-password": _password,
    "grafana-admin-password": _password,
    API_KEYS_ENTRY: _api_keys,
    SECRETS_KEY_ENTRY: new_key,
}


def apply(cluster: Cluster, manifests: list[Manifest], on_applied: Callable[[str], None] = lambda _: None) -> None:
    """Server-side apply each object in order, as field manager `amctl`, taking over conflicting fields."""
    for manifest in manifests:
        meta = manifest["metadata"]
        cluster.dynamic.server_side_apply(
            cluster.resource(manifest["apiVersion"], manifest["kind"]),
            body=manifest,
            name=meta["name"],
            namespace=meta.get("namespace"),
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
        )
        on_applied(describe(manifest))


def rerun_finished_jobs(cluster: Cluster, manifests: list[Manifest]) -> list[str]:
    """Delete the finished ones among `manifests`' Jobs so applying them runs them again.

    A Job's pod template cannot change and a finished Job does not run again, yet migrations and the
    rule job's submission must run on every `up` (both are idempotent). Returns what was deleted.
    """
    deleted = []
    for manifest in manifests:
        if manifest["kind"] != "Job":
            continue
        meta = manifest["metadata"]
        live = cluster.get("batch/v1", "Job", meta["name"], meta["namespace"])
        conditions = ((live or {}).get("status") or {}).get("conditions") or []
        if any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions):
            cluster.dynamic.delete(cluster.resource("batch/v1", "Job"), name=meta["name"],
                                   namespace=meta["namespace"], body={"propagationPolicy": "Background"})
            deleted.append(describe(manifest))
    return deleted


def ensure_secrets(cluster: Cluster, namespace: str) -> list[str]:
    """Create the passwords and API keys that are missing (never replacing one); returns the entries created."""
    existing = cluster.get("v1", "Secret", SECRET_NAME, namespace)
    have = set((existing or {}).get("data") or {})
    missing = [key for key in SECRET_VALUES if key not in have]
    if not missing:
        return []
    data = {key: base64.b64encode(SECRET_VALUES[key]().encode()).decode() for key in missing}
    body: Manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET_NAME, "namespace": namespace,
                     "labels": {"app.kubernetes.io/part-of": "audience-manager",
                                "app.kubernetes.io/managed-by": FIELD_MANAGER}},
        "type": "Opaque",
        "data": data,
    }
    resource = cluster.resource("v1", "Secret")
    if existing is None:
        cluster.dynamic.create(resource, body=body, namespace=namespace)
    else:
        cluster.dynamic.patch(resource, body={"data": data}, name=SECRET_NAME, namespace=namespace,
                              content_type="application/merge-patch+json")
    return missing


def read_api_key(cluster: Cluster, namespace: str, scope: str) -> str | None:
    """The first key with `scope` in the Secret's `api-keys` entry; None when there is none."""
    existing = cluster.get("v1", "Secret", SECRET_NAME, namespace)
    encoded = ((existing or {}).get("data") or {}).get(API_KEYS_ENTRY)
    if not encoded:
        return None
    for line in base64.b64decode(encoded).decode().splitlines():
        key, _, key_scope = line.strip().rpartition(":")
        if key and not line.lstrip().startswith("#") and key_scope.strip() == scope:
            return key
    return None
