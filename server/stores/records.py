"""Our messages as bytes on a topic: one encoder, and one decoder that never stops a consumer.

Decoding is strict (`server.runtime.storable.decode`: valid JSON, nothing unstorable) and typed (the
message's reader from `server.domain`). A record that fails either is an `UnreadableRecord`: the
consumer skips it and says so through `RejectedRecords`, so one bad record cannot kill the job or
put a consumer into a crash loop that re-reads it forever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

import orjson
from prometheus_client import CollectorRegistry, Counter

from server.domain.records import InvalidRecord
from server.runtime.storable import UnstorableValue
from server.runtime.storable import decode as decode_storable

T = TypeVar("T")
SHOWN_CHARS = 200  # of a rejected record's reason, in the log


class Encodable(Protocol):
    """What `encode` needs of a message: its JSON form."""

    def to_json(self) -> dict[str, Any]: ...


class UnreadableRecord(ValueError):
    """A record that is not valid, storable JSON, or not the message its topic carries."""


def encode(message: Encodable) -> bytes:
    """A message as it goes on a topic (its `to_json()`, compact)."""
    return orjson.dumps(message.to_json())


def decode(raw: bytes | str | None, read: Callable[[Any], T]) -> T:
    """The message in `raw`, read by `read` (e.g. `SegmentDefinition.from_json`), or UnreadableRecord."""
    if raw is None:
        raise UnreadableRecord("no value")
    try:
        return read(decode_storable(raw))
    except (UnstorableValue, InvalidRecord) as exc:
        raise UnreadableRecord(str(exc)) from None


class RejectedRecords:
    """Counts the records a consumer skipped (unreadable, or refused) and logs each one, once, with where
    it was read."""

    def __init__(self, log: logging.Logger, count: Callable[[], None]) -> None:
        self.log, self.count = log, count

    @classmethod
    def counted(cls, log: logging.Logger, registry: CollectorRegistry, name: str, help_text: str) -> RejectedRecords:
        """Rejections counted by a Prometheus counter `name` (ending in _total) in `registry`."""
        return cls(log, Counter(name.removesuffix("_total"), help_text, registry=registry).inc)

    def reject(self, where: str, reason: UnreadableRecord | str) -> None:
        self.count()
        text = str(reason)
        self.log.warning("skipped a record (%s): %s", where,
                         text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…")

    def readable(self, messages: Iterable[Any], read: Callable[[Any], T]) -> list[T]:
        """What `read` makes of each consumed message, in order; one it cannot read is rejected."""
        found = []
        for message in messages:
            try:
                found.append(read(message))
            except UnreadableRecord as exc:
                self.reject(position(message), exc)
        return found


def value_read_by(read: Callable[[Any], T]) -> Callable[[Any], T]:
    """A reader of consumed messages, from a reader of their decoded values (`membership_record`, ...)."""
    return lambda message: decode(message.value(), read)


def position(message: Any) -> str:
    """Where a consumed record was: `topic[partition]@offset` (a confluent_kafka Message)."""
    return f"{message.topic()}[{message.partition()}]@{message.offset()}"
