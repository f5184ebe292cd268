"""One whole local stack (started with `amctl up` on free ports) shared by a test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.stack import Stack, amctl, stack_environment


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = stack_environment(tmp_path_factory.mktemp("shared-stack"))
    up = amctl(env, "up")
    if up.returncode != 0:
        amctl(env, "down", "--purge")
        pytest.fail(f"amctl up failed:\n{up.stdout}\n{up.stderr}")
    stack = Stack(env)
    try:
        yield stack
    finally:
        stack.close()
        amctl(env, "down", "--purge")  # the data may live outside tmp (/var/lib/amctl when root)
