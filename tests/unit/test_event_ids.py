"""The eventIds the Ingestion API makes for events sent without one."""

from __future__ import annotations

import uuid

import pytest

from server.ingestion_api.ingestor import new_event_ids

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("count", [0, 1, 3, 500])
def test_new_event_ids_are_distinct_random_uuids_in_their_usual_text(count: int) -> None:
    ids = new_event_ids(count)
    assert len(ids) == len(set(ids)) == count
    for text in ids:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)
