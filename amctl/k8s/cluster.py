"""The connection to a cluster: kube context check, API clients and typed access to objects."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kubernetes import config as _config
from kubernetes import dynamic as _dynamic
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.dynamic.exceptions import NotFoundError
from urllib3.exceptions import HTTPError

from amctl.errors import AmctlError

# The kubernetes client's hints are partial (untyped functions): use it as untyped, in this one module.
kube_config: Any = _config
DynamicClient: Any = _dynamic.DynamicClient

DEFAULT_CONTEXT = "rancher-desktop"


class ClusterError(AmctlError):
    """An expected failure talking to the cluster, with what to do next."""


@dataclass
class Cluster:
    """One kube context's API: the dynamic client for any kind, the raw client for logs."""

    api: ApiClient
    context: str

    def __post_init__(self) -> None:
        self.dynamic: Any = DynamicClient(self.api)

    def resource(self, api_version: str, kind: str) -> Any:
        """The API resource serving `kind` (discovered once per client)."""
        return self.dynamic.resources.get(api_version=api_version, kind=kind)

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object as a dict, or None when it does not exist."""
        try:
            found = self.dynamic.get(self.resource(api_version, kind), name=name, namespace=namespace)
        except NotFoundError:
            return None
        return dict(found.to_dict())

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
        found = self.dynamic.get(self.resource(api_version, kind), namespace=namespace, label_selector=label_selector)
        return [dict(item) for item in found.to_dict().get("items", [])]

    def close(self) -> None:
        api: Any = self.api
        api.close()


def connect(context: str, kubeconfig: str | None = None) -> Cluster:
    """A client for `context`; ClusterError when the kubeconfig does not have it."""
    try:
        contexts, _ = kube_config.list_kube_config_contexts(config_file=kubeconfig)
    except (ConfigException, FileNotFoundError) as exc:
        raise ClusterError(f"no usable kubeconfig: {exc}",
                           hint="install Rancher Desktop with Kubernetes enabled (it writes ~/.kube/config)") from None
    names = [c["name"] for c in contexts]
    if context not in names:
        raise ClusterError(f"kube context '{context}' not found (known: {', '.join(names) or 'none'})",
                           hint="start Rancher Desktop with Kubernetes enabled, or pass --context NAME")
    return Cluster(kube_config.new_client_from_config(config_file=kubeconfig, context=context), context)


def _api_message(exc: ApiException) -> str:
    """The API server's own explanation (the Status object's message), first line only."""
    try:
        message = str(json.loads(exc.body or "{}").get("message", ""))
    except (ValueError, AttributeError):
        message = str(exc.body or "")
    return message.strip().splitlines()[0] if message.strip() else "no details"


@contextmanager
def session(context: str, kubeconfig: str | None = None) -> Iterator[Cluster]:
    """A connected cluster, closed afterwards; refused and failed API calls become one ClusterError."""
    cluster = None
    try:
        cluster = connect(context, kubeconfig)  # asks the API server for its version: it may not answer
        yield cluster
    except ApiException as exc:
        raise ClusterError(f"the Kubernetes API refused a request: {exc.status} {exc.reason}: {_api_message(exc)}",
                           hint="check your permissions on the cluster (kubectl auth can-i '*' '*')") from None
    except HTTPError as exc:
        raise ClusterError(f"cannot reach the Kubernetes API of context '{context}': {type(exc).__name__}",
                           hint="is Rancher Desktop running with Kubernetes enabled?") from None
    finally:
        if cluster is not None:
            cluster.close()
