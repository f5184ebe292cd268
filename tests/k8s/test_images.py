"""`amctl images build`: nerdctl (namespace k8s.io) or docker, whichever is on PATH; a clear line when neither is."""

from __future__ import annotations

import re
import shlex
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from amctl.cli import app
from amctl.k8s.images import IMAGES_DIR, LOCK_FILE, locked_version

pytestmark = pytest.mark.k8s


def _builder(bin_dir: Path, name: str, exit_code: int = 0) -> Path:
    """An executable named `name` that records its arguments and prints a line, as a builder would."""
    log = bin_dir / f"{name}.calls"
    script = bin_dir / name
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {shlex.quote(str(log))}\necho 'step 1/9 : FROM base'\n"
                      f"exit {exit_code}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return log


def _build(bin_dir: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["images", "build"], env={"PATH": str(bin_dir), "COLUMNS": "200"})
    return result.exit_code, result.output


def test_neither_builder_is_one_clear_line(tmp_path: Path) -> None:
    code, output = _build(tmp_path)
    assert code == 1
    assert output.strip().splitlines() == [
        "error: neither nerdctl nor docker is on PATH: enable Rancher Desktop (Preferences → Container Engine) "
        "or install docker, then retry"]


def test_nerdctl_builds_both_images_into_the_k8s_io_namespace(tmp_path: Path) -> None:
    nerdctl, docker = _builder(tmp_path, "nerdctl"), _builder(tmp_path, "docker")
    code, output = _build(tmp_path)
    assert code == 0, output
    calls = nerdctl.read_text().splitlines()
    root = str(IMAGES_DIR.parents[1])
    assert calls == [
        f"--namespace k8s.io build --tag audience-manager:0.1.0 --file {IMAGES_DIR}/service.Dockerfile {root}",
        f"--namespace k8s.io build --tag audience-manager-flink:0.1.0 --file {IMAGES_DIR}/flink.Dockerfile "
        f"--build-arg FLINK_VERSION={locked_version('apache-flink')} {root}",
    ]
    assert not docker.exists()  # nerdctl wins when both are present
    assert "built audience-manager:0.1.0" in output and "step 1/9 : FROM base" in output


def test_docker_is_used_when_it_is_the_only_builder(tmp_path: Path) -> None:
    docker = _builder(tmp_path, "docker")
    code, _ = _build(tmp_path)
    assert code == 0
    assert [c.split()[:3] for c in docker.read_text().splitlines()] == [["build", "--tag", "audience-manager:0.1.0"],
                                                                       ["build", "--tag",
                                                                        "audience-manager-flink:0.1.0"]]


def test_a_failed_build_names_the_image_and_stops(tmp_path: Path) -> None:
    nerdctl = _builder(tmp_path, "nerdctl", exit_code=3)
    code, output = _build(tmp_path)
    assert code == 1
    assert "building audience-manager:0.1.0 failed (exit code 3)" in output
    assert len(nerdctl.read_text().splitlines()) == 1  # the Flink image was not attempted


def test_the_service_image_keeps_the_runtime_and_leaves_pyflink_and_dev_tools_out() -> None:
    dockerfile = (IMAGES_DIR / "service.Dockerfile").read_text()
    assert "USER 10001" in dockerfile
    patterns = [re.compile(line, re.IGNORECASE) for name in ("dev-excludes.txt", "pyflink-excludes.txt")
                for line in (IMAGES_DIR / name).read_text().splitlines() if line]
    kept = {line.split("==")[0].lower() for line in LOCK_FILE.read_text().splitlines()
            if line and not any(p.search(line) for p in patterns)}
    assert {"fastapi", "uvicorn", "confluent-kafka", "psycopg", "aerospike", "pydantic-settings"} <= kept
    assert not kept & {"apache-flink", "pemja", "pytest", "mypy", "kmock"}
