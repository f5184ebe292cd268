# Our service image: the three APIs, the email worker, the rule engine process and migrations.
# Built by `amctl images build` from the repository root (the build context).
FROM python:3.11.10-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/audience-manager
COPY requirements.lock pyproject.toml README.md ./
COPY templates/images/runtime-lock.awk templates/images/dev-excludes.txt templates/images/pyflink-excludes.txt /tmp/
# The locked versions with their hashes, without PyFlink (the job runs in the Flink image) and without the dev tools.
RUN awk -f /tmp/runtime-lock.awk /tmp/dev-excludes.txt /tmp/pyflink-excludes.txt requirements.lock > /tmp/runtime.lock \
 && pip install --require-hashes -r /tmp/runtime.lock
COPY amctl ./amctl
COPY server ./server
COPY flinkjob ./flinkjob
# built with the locked setuptools: nothing unhashed is downloaded
RUN pip install --no-deps --no-build-isolation . \
 && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin audience

USER 10001
EXPOSE 8080
CMD ["python", "-m", "server.segment_api"]
