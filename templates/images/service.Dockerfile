# Our service image: the three APIs, the email worker, the rule engine process and migrations.
# Built by `amctl images build` from the repository root (the build context).
FROM python:3.11.10-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/audience-manager
COPY requirements.lock pyproject.toml README.md ./
COPY templates/images/dev-excludes.txt templates/images/pyflink-excludes.txt /tmp/
# The locked versions, without PyFlink (the job runs in the Flink image) and without the dev tools.
RUN grep -v -i -E -f /tmp/dev-excludes.txt -f /tmp/pyflink-excludes.txt requirements.lock > /tmp/runtime.lock \
 && pip install -r /tmp/runtime.lock
COPY amctl ./amctl
COPY server ./server
COPY flinkjob ./flinkjob
RUN pip install --no-deps . \
 && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin audience

USER 10001
EXPOSE 8080
CMD ["python", "-m", "server.segment_api"]
