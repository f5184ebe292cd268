"""Waiting for workloads: readiness judged as `kubectl rollout status` does, and why a pod is stuck.

`rollout_state` and `pod_problems` are pure (object dicts in, verdicts out); `pending` reads the
cluster and adds the last log lines of crash-looping containers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException

from amctl.errors import AmctlError
from amctl.k8s.cluster import Cluster
from amctl.k8s.render import Manifest, describe
from amctl.target import Pending

WORKLOADS = ("Deployment", "StatefulSet", "Job")
PULL_ERRORS = frozenset({"ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull", "InvalidImageName"})
CONFIG_ERRORS = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError"})
LOG_LINES = 5


@dataclass(frozen=True)
class RolloutState:
    done: bool
    message: str
    failed: bool = False


@dataclass(frozen=True)
class PodProblem:
    pod: str
    container: str
    reason: str
    detail: str


def _hint(pending: list[Pending]) -> str:
    if any(p.reason == "ImagePullBackOff" for p in pending):
        return "build our images into the cluster first: amctl images build"
    return "amctl status --target k8s shows every workload; kubectl describe pod NAME shows events"


class WaitTimeout(AmctlError):
    """Workloads that were still not ready when the timeout ran out."""

    def __init__(self, pending: list[Pending], timeout_s: float) -> None:
        names = ", ".join(f"{p.workload} ({p.reason})" for p in pending)
        super().__init__(f"timed out: not ready after {timeout_s:.0f} s: {names}", hint=_hint(pending))
        self.pending = pending


class WorkloadFailed(AmctlError):
    """A workload that will not get ready by waiting longer (a Job out of retries)."""

    def __init__(self, pending: Pending) -> None:
        super().__init__(f"{pending.workload} failed: {pending.reason}" + (f" ({pending.detail})" if pending.detail
                                                                           else ""), hint=_hint([pending]))
        self.pending = [pending]


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), None)


def rollout_state(obj: dict[str, Any]) -> RolloutState:
    """Is this Deployment, StatefulSet or Job done rolling out (or completed)?"""
    kind, spec, status = obj["kind"], obj.get("spec") or {}, obj.get("status") or {}
    if kind == "Job":
        for name, failed in (("Complete", False), ("Failed", True)):
            cond = _condition(obj, name)
            if cond and cond.get("status") == "True":
                return RolloutState(not failed, cond.get("message") or name.lower(), failed)
        return RolloutState(False, f"{status.get('active', 0)} running, {status.get('failed', 0)} failed")
    generation = obj.get("metadata", {}).get("generation")
    if generation is not None and status.get("observedGeneration", 0) < generation:
        return RolloutState(False, "waiting for the rollout to be observed")
    wanted = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    if kind == "Deployment":
        progressing = _condition(obj, "Progressing")
        if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
            return RolloutState(False, "progress deadline exceeded", failed=True)
        if updated < wanted:
            return RolloutState(False, f"{updated} of {wanted} updated")
        if status.get("replicas", 0) > updated:
            return RolloutState(False, f"{status['replicas'] - updated} old replica(s) terminating")
        available = status.get("availableReplicas", 0)
        if available < updated:
            return RolloutState(False, f"{available} of {updated} available")
        return RolloutState(True, f"{available}/{wanted} available")
    ready = status.get("readyReplicas", 0)
    if ready < wanted:
        return RolloutState(False, f"{ready} of {wanted} ready")
    if status.get("updateRevision") and status.get("currentRevision") != status.get("updateRevision"):
        return RolloutState(False, f"{updated} of {wanted} updated")
    return RolloutState(True, f"{ready}/{wanted} ready")


def pod_problems(pod: dict[str, Any]) -> list[PodProblem]:
    """Why this pod's containers are not running: image pulls, crash loops, config, scheduling."""
    name, status = pod["metadata"]["name"], pod.get("status") or {}
    problems = []
    scheduled = _condition(pod, "PodScheduled")
    if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        message = scheduled.get("message", "")
        reason = "unschedulable: not enough memory" if "Insufficient memory" in message else "unschedulable"
        problems.append(PodProblem(name, "", reason, message))
    statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    for container in statuses:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "")
        if reason in PULL_ERRORS:
            detail = f"{container.get('image', '')}: {waiting.get('message', '')}".strip(": ")
            problems.append(PodProblem(name, container["name"], "ImagePullBackOff", detail))
        elif reason == "CrashLoopBackOff":
            last = ((container.get("lastState") or {}).get("terminated") or {})
            detail = f"restarted {container.get('restartCount', 0)} times, last exit code {last.get('exitCode', '?')}"
            if last.get("reason") == "OOMKilled":
                detail += " (OOMKilled: the memory limit is too small)"
            problems.append(PodProblem(name, container["name"], "CrashLoopBackOff", detail))
        elif reason in CONFIG_ERRORS:
            problems.append(PodProblem(name, container["name"], reason, waiting.get("message", "")))
    return problems


def _selector(manifest: Manifest) -> str:
    if manifest["kind"] == "Job":
        labels = manifest["spec"]["template"]["metadata"]["labels"]
    else:
        labels = manifest["spec"]["selector"]["matchLabels"]
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _log_tail(cluster: Cluster, namespace: str, problem: PodProblem) -> tuple[str, ...]:
    try:
        text = CoreV1Api(cluster.api).read_namespaced_pod_log(
            problem.pod, namespace, container=problem.container, previous=True, tail_lines=LOG_LINES)
    except ApiException:
        return ()
    return tuple(str(text).rstrip("\n").splitlines()[-LOG_LINES:])


def workloads(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if m["kind"] in WORKLOADS]


def pending(cluster: Cluster, manifests: list[Manifest]) -> list[Pending]:
    """Every workload of `manifests` that is not ready, with the reason (and logs when it crashes)."""
    found = []
    live_objects: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for manifest in workloads(manifests):
        meta = manifest["metadata"]
        scope = (manifest["apiVersion"], manifest["kind"], meta["namespace"])
        if scope not in live_objects:  # one list per kind and namespace, not one request per workload
            # list items carry no kind of their own
            live_objects[scope] = {o["metadata"]["name"]: {**o, "kind": scope[1]} for o in cluster.list(*scope)}
        live = live_objects[scope].get(meta["name"])
        if live is None:
            found.append(Pending(describe(manifest), "not created"))
            continue
        state = rollout_state(live)
        if state.done:
            continue
        pods = cluster.list("v1", "Pod", meta["namespace"], _selector(manifest))
        problems = [problem for pod in pods for problem in pod_problems(pod)]
        if problems:
            first = problems[0]
            logs = _log_tail(cluster, meta["namespace"], first) if first.reason == "CrashLoopBackOff" else ()
            where = f"{first.pod}/{first.container}" if first.container else first.pod
            found.append(Pending(describe(manifest), first.reason, f"{where}: {first.detail}", logs, state.failed))
        else:
            found.append(Pending(describe(manifest), state.message, failed=state.failed))
    return found


def wait_ready(cluster: Cluster, manifests: list[Manifest], timeout_s: float,
               on_progress: Callable[[list[Pending], float], None], poll_s: float = 2.0) -> None:
    """Return once every workload is ready; WorkloadFailed or WaitTimeout otherwise."""
    started = time.monotonic()
    while True:
        waiting = pending(cluster, manifests)
        elapsed = time.monotonic() - started
        on_progress(waiting, elapsed)
        if not waiting:
            return
        failed = next((p for p in waiting if p.failed), None)
        if failed is not None:
            raise WorkloadFailed(failed)
        if elapsed >= timeout_s:
            raise WaitTimeout(waiting, timeout_s)
        time.sleep(poll_s)
