"""Builds our two images straight into the cluster's image store (Rancher Desktop).

nerdctl with `--namespace k8s.io` (the containerd engine) or docker (the moby engine), whichever
is on PATH, nerdctl first. The manifests use these tags with imagePullPolicy IfNotPresent, so the
kubelet finds them without a registry.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from amctl.errors import AmctlError
from amctl.k8s.profile import Profile
from amctl.paths import REPO_ROOT

IMAGES_DIR = REPO_ROOT / "templates" / "images"
LOCK_FILE = REPO_ROOT / "requirements.lock"
BUILDERS: tuple[tuple[str, ...], ...] = (("nerdctl", "--namespace", "k8s.io"), ("docker",))


class NoBuilder(AmctlError):
    """Neither nerdctl nor docker is on PATH."""


@dataclass(frozen=True)
class Image:
    name: str
    tag: str
    dockerfile: Path
    build_args: tuple[tuple[str, str], ...] = ()


def locked_version(package: str, lock: Path = LOCK_FILE) -> str:
    """The version `requirements.lock` pins `package` to."""
    # `pkg==1.2.3`, alone on its line or followed by ` \` and its `--hash=` lines (a lock with hashes)
    match = re.search(rf"^{re.escape(package)}==([^\s\\]+)", lock.read_text(), re.MULTILINE | re.IGNORECASE)
    if match is None:
        raise ValueError(f"{package} is not in {lock.name}")
    return match.group(1)


def images(profile: Profile) -> list[Image]:
    """Our service image and our Flink image, tagged as the profile's manifests expect."""
    return [
        Image("service", profile.images.service, IMAGES_DIR / "service.Dockerfile"),
        # the Flink runtime must be the version PyFlink is locked to
        Image("flink", profile.images.flink, IMAGES_DIR / "flink.Dockerfile",
              (("FLINK_VERSION", locked_version("apache-flink")),)),
    ]


def find_builder(which: Callable[[str], str | None] = shutil.which) -> tuple[str, ...]:
    for builder in BUILDERS:
        if which(builder[0]):
            return builder
    raise NoBuilder("neither nerdctl nor docker is on PATH: enable Rancher Desktop "
                    "(Preferences → Container Engine) or install docker, then retry")


def build_command(builder: tuple[str, ...], image: Image, context: Path = REPO_ROOT) -> list[str]:
    args = [item for name, value in image.build_args for item in ("--build-arg", f"{name}={value}")]
    return [*builder, "build", "--tag", image.tag, "--file", str(image.dockerfile), *args, str(context)]


def build(builder: tuple[str, ...], image: Image, on_line: Callable[[str], None]) -> int:
    """Run one build, passing each output line to `on_line`; returns the builder's exit code."""
    with subprocess.Popen(build_command(builder, image), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace") as process:
        assert process.stdout is not None  # PIPE was requested
        for line in process.stdout:
            on_line(line.rstrip("\n"))
        return process.wait()
