"""Tearing the deployment down: the namespace (and everything in it) plus our cluster-wide RBAC objects."""

from __future__ import annotations

import time
from collections.abc import Callable

from kubernetes.dynamic.exceptions import NotFoundError

from amctl.errors import AmctlError
from amctl.k8s.cluster import Cluster
from amctl.k8s.render import Manifest, describe


class DeleteTimeout(AmctlError):
    """The namespace was still there when the timeout ran out."""


def delete(cluster: Cluster, manifests: list[Manifest], namespace: str, timeout_s: float,
           on_progress: Callable[[str, str], None], poll_s: float = 1.0) -> bool:
    """Delete cluster-scoped objects of `manifests` and the namespace, then wait until the namespace is gone.

    `on_progress(what, state)` hears of each step. Returns False when there was nothing to delete.
    """
    found = False
    for manifest in manifests:
        if manifest["kind"] == "Namespace" or "namespace" in manifest["metadata"]:
            continue
        try:
            cluster.dynamic.delete(cluster.resource(manifest["apiVersion"], manifest["kind"]),
                                   name=manifest["metadata"]["name"])
            found = True
            on_progress(describe(manifest), "deleted")
        except NotFoundError:
            pass
    try:
        cluster.dynamic.delete(cluster.resource("v1", "Namespace"), name=namespace)
        found = True
    except NotFoundError:
        return found
    started = time.monotonic()
    while (live := cluster.get("v1", "Namespace", namespace)) is not None:
        elapsed = time.monotonic() - started
        phase = (live.get("status") or {}).get("phase", "Terminating")
        if elapsed >= timeout_s:
            raise DeleteTimeout(f"namespace {namespace} still {phase} after {timeout_s:.0f} s",
                                hint=f"kubectl get namespace {namespace} -o yaml shows what holds it")
        on_progress(f"namespace {namespace}", f"{phase} ({elapsed:.0f} s)")
        time.sleep(poll_s)
    return True
