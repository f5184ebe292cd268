"""Kubernetes-target fixtures: rendered profiles and the kmock API emulator with a tiny controller
(promtool comes from tests/conftest.py)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import attrs
import kmock as km
import pytest
import pytest_asyncio
import yaml
from kmock._internal import enums, rendering

from amctl.k8s.profile import available_profiles, load_profile
from amctl.k8s.render import Manifest, render

# resource (group/version/plural) → (kind, namespaced) for everything the profiles render
RESOURCES: dict[str, tuple[str, bool]] = {
    "v1/namespaces": ("Namespace", False),
    "v1/secrets": ("Secret", True),
    "v1/configmaps": ("ConfigMap", True),
    "v1/services": ("Service", True),
    "v1/serviceaccounts": ("ServiceAccount", True),
    "v1/pods": ("Pod", True),
    "v1/persistentvolumeclaims": ("PersistentVolumeClaim", True),
    "apps/v1/deployments": ("Deployment", True),
    "apps/v1/statefulsets": ("StatefulSet", True),
    "batch/v1/jobs": ("Job", True),
    "autoscaling/v2/horizontalpodautoscalers": ("HorizontalPodAutoscaler", True),
    "policy/v1/poddisruptionbudgets": ("PodDisruptionBudget", True),
    "networking.k8s.io/v1/networkpolicies": ("NetworkPolicy", True),
    "rbac.authorization.k8s.io/v1/roles": ("Role", True),
    "rbac.authorization.k8s.io/v1/rolebindings": ("RoleBinding", True),
    "rbac.authorization.k8s.io/v1/clusterroles": ("ClusterRole", False),
    "rbac.authorization.k8s.io/v1/clusterrolebindings": ("ClusterRoleBinding", False),
}
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}


NAMESPACE_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)$")
ACTIONS = {"GET": enums.action.FETCH, "PATCH": enums.action.UPDATE, "DELETE": enums.action.DELETE}


class ApplyingEmulator(km.KubernetesEmulator):
    """kmock's emulator, plus what server-side apply does to a missing object (create it), and
    namespaces addressed by name (`/api/v1/namespaces/NAME`, which kmock reads as a namespace scope)."""

    async def _handle(self, request: rendering.Request) -> Any:
        match = NAMESPACE_PATH.match(request.url.path)
        if match and request.method.value in ACTIONS:
            fixed = attrs.evolve(request, resource=km.resource("", "v1", "namespaces"), namespace=None,
                                 name=match.group(1), action=ACTIONS[request.method.value])
            self._requests[self._requests.index(request)] = fixed  # reactions only serve requests they saw
            request = fixed
        if (request.action == enums.action.UPDATE and request.resource is not None
                and "apply-patch" in request.headers.get("Content-Type", "")):
            key = (request.resource, request.namespace, request.name)
            if key not in self.objects or self.objects[key].deleted:
                self.objects[key] = request.data
        return await super()._handle(request)

    async def _serve_list(self, request: rendering.Request) -> Any:
        """kmock's list, with the list's kind (the client needs it) and equality label selectors applied."""
        listed = await super()._serve_list(request)
        assert request.resource is not None  # lists are Kubernetes requests
        selector = [pair.split("=", 1) for pair in request.params.get("labelSelector", "").split(",") if pair]
        items = [item for item in listed["items"]
                 if all((item.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in selector)]
        kind = RESOURCES[_key(request.resource)][0]
        # list items carry no kind, as the real API serves them
        items = [{k: v for k, v in item.items() if k not in ("kind", "apiVersion")} for item in items]
        return {**listed, "apiVersion": "v1", "kind": f"{kind}List", "items": items}


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Manifest]]:
    return {name: render(load_profile(name)) for name in available_profiles()}


def by_kind(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def containers_of(manifests: list[Manifest]) -> Iterator[tuple[Manifest, dict[str, Any]]]:
    for m in manifests:
        if m["kind"] in ("Deployment", "StatefulSet", "Job"):
            pod = m["spec"]["template"]["spec"]
            for c in pod.get("initContainers", []) + pod["containers"]:
                yield m, c


# -- the emulated cluster ------------------------------------------------------------------


@dataclass
class FakeCluster:
    """The emulator, a kubeconfig pointing at it, and a controller making workloads ready.

    `stuck` maps a workload name to the pod status its pod keeps (it never gets ready);
    `finalize_after_s` keeps a deleted namespace Terminating that long.
    """

    emulator: ApplyingEmulator
    kubeconfig: Path
    stuck: dict[str, dict[str, Any]] = field(default_factory=dict)
    finalize_after_s: float = 0.3
    failed_jobs: dict[str, str] = field(default_factory=dict)  # Job name → the Failed condition's message

    @property
    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig), "AMCTL_K8S_POLL_S": "0.05", "COLUMNS": "200"}

    def objects(self, kind: str) -> dict[tuple[str | None, str], dict[str, Any]]:
        return {(ns, name): obj.raw for (res, ns, name), obj in self.emulator.objects.items()
                if not obj.deleted and RESOURCES.get(_key(res), ("",))[0] == kind}

    def requests(self, predicate: Callable[[rendering.Request], bool]) -> list[rendering.Request]:
        return [r for r in self.emulator if predicate(r)]

    def _pod(self, namespace: str, workload: dict[str, Any], status: dict[str, Any]) -> None:
        name = f"{workload['metadata']['name']}-0"
        labels = workload["spec"]["template"]["metadata"]["labels"]
        key = (km.resource("", "v1", "pods"), namespace, name)
        if key not in self.emulator.objects or self.emulator.objects[key].deleted:
            self.emulator.objects[key] = {"apiVersion": "v1", "kind": "Pod",
                                          "metadata": {"name": name, "namespace": namespace, "labels": labels},
                                          "status": status}

    def tick(self, terminating_since: dict[str, float]) -> None:
        for (res, ns, name), obj in list(self.emulator.objects.items()):
            if obj.deleted:
                continue
            kind = RESOURCES.get(_key(res), ("",))[0]
            raw = obj.raw
            if kind == "Namespace":
                if raw["metadata"].get("deletionTimestamp"):
                    since = terminating_since.setdefault(name, time.monotonic())
                    if time.monotonic() - since >= self.finalize_after_s:
                        obj.delete()
                        for other in self.emulator.objects.values():  # the namespace's objects go with it
                            if not other.deleted and other.raw.get("metadata", {}).get("namespace") == name:
                                other.delete()
                elif not raw["metadata"].get("finalizers"):
                    obj.patch({"metadata": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
            elif kind in ("Deployment", "StatefulSet", "Job") and "status" not in raw:
                if name in self.stuck:
                    self._pod(ns or "", raw, self.stuck[name])
                    obj.patch({"status": {"replicas": 1} if kind != "Job" else {"active": 1}})
                elif kind == "Job" and name in self.failed_jobs:
                    obj.patch({"status": {"failed": 7, "conditions": [
                        {"type": "Failed", "status": "True", "message": self.failed_jobs[name]}]}})
                elif kind == "Job":
                    obj.patch({"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}})
                else:
                    n = raw["spec"].get("replicas", 1)
                    obj.patch({"status": {"replicas": n, "updatedReplicas": n, "readyReplicas": n,
                                          "availableReplicas": n}})


def _key(res: Any) -> str:
    return "/".join(p for p in (res.group, res.version, res.plural) if p)


async def _control(cluster: FakeCluster) -> None:
    terminating: dict[str, float] = {}
    while True:
        cluster.tick(terminating)
        await asyncio.sleep(0.05)


@pytest.fixture()
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    return {**kmock_options, "cls": ApplyingEmulator}


@pytest_asyncio.fixture()
async def fake_cluster(kmock: ApplyingEmulator, tmp_path: Path) -> AsyncIterator[FakeCluster]:
    for key, (kind, namespaced) in RESOURCES.items():
        kmock.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=namespaced, verbs=VERBS,
                                                  subresources={"log", "status"} if kind == "Pod" else {"status"})
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "rancher-desktop",
        "clusters": [{"name": "emulated", "cluster": {"server": str(kmock.url).rstrip("/")}}],
        "users": [{"name": "tester", "user": {"token": "test-token"}}],
        "contexts": [{"name": "rancher-desktop", "context": {"cluster": "emulated", "user": "tester"}}],
    }))
    cluster = FakeCluster(kmock, kubeconfig)
    controller = asyncio.create_task(_control(cluster))
    try:
        yield cluster
    finally:
        controller.cancel()
