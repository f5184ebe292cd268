"""Tearing the deployment down: the namespace (and everything in it) plus our cluster-wide RBAC objects."""

from __future__ import annotations

import time
from collections.abc import Callable

from kubernetes.dynamic.exceptions import NotFoundError

from amctl.k8s.cluster import Cluster
from amctl.k8s.render import Manifest, describe


class DeleteTimeout(TimeoutError):
    pass


def delete(cluster: Cluster, manifests: list[Manifest], namespace: str, timeout_s: float,
           on_progress: Callable[[str, float], None], poll_s: float = 1.0) -> bool:
    """Delete cluster-scoped objects of `manifests` and the namespace, then wait until the namespace is gone.

    Returns False when there was nothing to delete.
    """
    found = False
    for manifest in manifests:
        if manifest["kind"] == "Namespace" or "namespace" in manifest["metadata"]:
            continue
        try:
            cluster.dynamic.delete(cluster.resource(manifest["apiVersion"], manifest["kind"]),
                                   name=manifest["metadata"]["name"])
            found = True
            on_progress(f"deleted {describe(manifest)}", 0.0)
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
            raise DeleteTimeout(f"namespace {namespace} still {phase} after {timeout_s:.0f} s")
        on_progress(f"namespace {namespace}: {phase}", elapsed)
        time.sleep(poll_s)
    return True
