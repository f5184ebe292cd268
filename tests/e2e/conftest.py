"""One whole local stack (started with `amctl up` on free ports) shared by a test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.stack import Stack, stack_environment, started_stack


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with started_stack(stack_environment(tmp_path_factory.mktemp("shared-stack"))) as stack:
        yield stack
