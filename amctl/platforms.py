"""Which Platform serves the settings' target, built with that target's own options.

The other target's options are refused here, in one line each, so no command branches on the target.
"""

from __future__ import annotations

from amctl.errors import AmctlError
from amctl.k8s.target import K8sOptions, K8sTarget
from amctl.local.options import FlinkMode, StackOptions
from amctl.local.stack import LocalStack
from amctl.settings import AmctlSettings, Target
from amctl.target import Platform


def open_platform(settings: AmctlSettings, k8s: K8sOptions | None = None, durable_broker: bool | None = None,
                  monitoring: bool | None = None, flink: FlinkMode | None = None) -> Platform:
    """The local stack as it was last asked to run, with `durable_broker`, `monitoring` and `flink` applied when
    given (None keeps the remembered choice); or the k8s deployment that `k8s` describes."""
    if settings.target is Target.K8S:
        if durable_broker is not None:
            raise AmctlError("--durable-broker/--memory-broker choose the local broker's storage", hint="on k8s "
                             "the brokers are Apache Kafka with persistent storage: leave the flag out")
        if monitoring is not None:
            raise AmctlError("--with-monitoring/--without-monitoring choose the local Prometheus",
                             hint="on k8s Prometheus, Grafana and Kafka UI always run: leave the flag out")
        if flink is not None:
            raise AmctlError("--flink chooses how the local target runs the rule job",
                             hint="on k8s the job always runs on the Flink session cluster: leave the flag out")
        return K8sTarget(settings, k8s or K8sOptions())
    return local_stack(settings, durable_broker=durable_broker, monitoring=monitoring, flink=flink)


def local_stack(settings: AmctlSettings, durable_broker: bool | None = None,
                monitoring: bool | None = None, flink: FlinkMode | None = None) -> LocalStack:
    """The local stack with the remembered options (`amctl.local.options`), changed by the ones given."""
    options = StackOptions.load(settings.state_dir).updated(durable_broker=durable_broker, monitoring=monitoring,
                                                            flink=flink)
    return LocalStack(settings, options=options)
