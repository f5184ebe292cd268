# Our Flink image: the official Flink image + Python 3.11 + apache-flink of the same version + the
# rule job (flinkjob, server.domain) + the Kafka connector jars the job uses, from the same locked
# packages as the local target. JobManager, TaskManagers and the rule-job-submit Job all run it.
ARG FLINK_VERSION=2.0.0
# the uv that scripts/uv-requirements.txt pins (tests/k8s/test_images.py keeps them equal)
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv
FROM flink:${FLINK_VERSION}-java17

USER root
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_NO_CACHE=1 \
    PYTHONUNBUFFERED=1
# uv installs a standalone CPython 3.11 for this architecture (amd64 or arm64)
RUN uv venv --python 3.11 /opt/venv

WORKDIR /opt/audience-manager
COPY requirements.lock pyproject.toml README.md ./
COPY templates/images/runtime-lock.awk templates/images/dev-excludes.txt /tmp/
RUN awk -f /tmp/runtime-lock.awk /tmp/dev-excludes.txt requirements.lock > /tmp/runtime.lock \
 && uv pip install --python /opt/venv/bin/python --require-hashes -r /tmp/runtime.lock
COPY amctl ./amctl
COPY server ./server
COPY flinkjob ./flinkjob
RUN uv pip install --python /opt/venv/bin/python --no-deps --no-build-isolation .

# The job's connectors on the cluster's classpath; PyFlink and the Prometheus reporter enabled.
RUN set -eux; \
    lib=/opt/venv/lib/python3.11/site-packages/pyflink/lib; \
    cp "$lib/flink-connector-kafka.jar" "$lib/kafka-clients.jar" /opt/flink/lib/; \
    ls /opt/flink/lib/flink-python*.jar || cp /opt/flink/opt/flink-python*.jar /opt/flink/lib/; \
    if [ ! -d /opt/flink/plugins/metrics-prometheus ]; then \
      mkdir -p /opt/flink/plugins/metrics-prometheus; \
      cp /opt/flink/opt/flink-metrics-prometheus*.jar /opt/flink/plugins/metrics-prometheus/; \
    fi; \
    mkdir -p /opt/flink/state; chown -R flink:flink /opt/flink/state

ENV PATH=/opt/venv/bin:$PATH
USER flink
