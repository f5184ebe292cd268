"""`python -m flinkjob.submit`: submit the rule job to the Flink session cluster at AM_FLINK_JOBMANAGER, once.

Kubernetes runs this as the rule-job-submit Job after the cluster is up; a job of the same name that
is already running or restarting is left alone, so re-running it is harmless.
"""

from __future__ import annotations

import logging

import httpx

from flinkjob.app import JOB_NAME
from flinkjob.settings import RuleEngineSettings

log = logging.getLogger("rule-job-submit")
ALIVE = frozenset({"CREATED", "INITIALIZING", "RUNNING", "RESTARTING", "RECONCILING"})


def running_job(rest: str) -> str | None:
    """The id of a live job named JOB_NAME on the cluster, if any."""
    jobs = httpx.get(f"{rest}/jobs/overview", timeout=10).raise_for_status().json()["jobs"]
    return next((j["jid"] for j in jobs if j["name"] == JOB_NAME and j["state"] in ALIVE), None)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = RuleEngineSettings()
    if not settings.flink_jobmanager:
        raise SystemExit("AM_FLINK_JOBMANAGER is not set: nothing to submit to (locally, amctl up runs the job)")
    existing = running_job(f"http://{settings.flink_jobmanager}")
    if existing:
        log.info("job %s already runs as %s; nothing to do", JOB_NAME, existing)
        return
    from flinkjob.job import build  # starts PyFlink's JVM gateway

    client = build(settings).execute_async(JOB_NAME)
    log.info("submitted %s as %s to %s", JOB_NAME, client.get_job_id(), settings.flink_jobmanager)


if __name__ == "__main__":
    main()
