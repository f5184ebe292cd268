"""The broker's object store: conditional writes, listings, files that outlive the process, and retention."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from amctl.local.objects import UNLISTED_GRACE_S, ObjectStore, PreconditionFailed, RetentionPolicy

pytestmark = pytest.mark.unit

CLUSTER = "clusters/tansu_cluster"


def batch_key(topic: str, partition: int, offset: int) -> str:
    return f"{CLUSTER}/topics/{topic}/partitions/{partition:0>10}/records/{offset:0>20}.batch"


def commit(store: ObjectStore, group: str, topic: str, partition: int, offset: int) -> None:
    store.put(f"{CLUSTER}/groups/consumers/{group}/offsets/{topic}/partitions/{partition:0>10}.json",
              json.dumps({"offset": offset, "leader_epoch": None, "timestamp": None, "metadata": ""}).encode())


def batches(store: ObjectStore, topic: str, partition: int = 0) -> list[int]:
    prefix = f"{CLUSTER}/topics/{topic}/partitions/{partition:0>10}/records/"
    keys, _, _ = store.list(prefix, max_keys=10_000)
    return [int(key[len(prefix):len(prefix) + 20]) for key in keys]


def filled(store: ObjectStore, topic: str, bases: list[int], partition: int = 0) -> ObjectStore:
    for base in bases:
        store.put(batch_key(topic, partition, base), f"batch at {base}".encode())
    return store


def test_create_only_and_replace_only_the_version_read() -> None:
    store = ObjectStore()
    first = store.put("watermark.json", b'{"high": 1}', if_none_match="*")
    with pytest.raises(PreconditionFailed):
        store.put("watermark.json", b'{"high": 9}', if_none_match="*")  # a second creator loses
    second = store.put("watermark.json", b'{"high": 2}', if_match=first)
    with pytest.raises(PreconditionFailed):
        store.put("watermark.json", b'{"high": 3}', if_match=first)  # a writer holding the old version loses
    with pytest.raises(PreconditionFailed):
        store.put("absent.json", b"{}", if_match="*")
    stored = store.get("watermark.json")
    assert stored is not None and stored.data == b'{"high": 2}' and stored.etag == second != first


def test_listing_in_key_order_with_common_prefixes_and_continuation() -> None:
    store = ObjectStore()
    for key in ("b/2", "a/1", "b/1", "c", "b/3/x", "bb"):
        store.put(key, b"")
    assert store.list("b/") == (["b/1", "b/2", "b/3/x"], [], None)
    assert store.list("b/", delimiter="/") == (["b/1", "b/2"], ["b/3/"], None)
    assert store.list("", delimiter="/") == (["bb", "c"], ["a/", "b/"], None)
    page, _, after = store.list("b", max_keys=2)
    assert page == ["b/1", "b/2"] and after == "b/2"
    assert store.list("b", start_after=after) == (["b/3/x", "bb"], [], None)
    first, prefixes, after = store.list("", delimiter="/", max_keys=2)
    assert (first, prefixes, after) == ([], ["a/", "b/"], "b/")
    assert store.list("", start_after=after, delimiter="/") == (["bb", "c"], [], None)  # "b/" is not listed twice
    assert store.delete("b/2") and not store.delete("b/2")
    assert store.list("b/")[0] == ["b/1", "b/3/x"]


def test_a_directory_store_comes_back_whole_and_drops_interrupted_writes(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    etag = store.put("clusters/c/meta.json", b'{"topics": {}}')
    store.put("clusters/c/gone.json", b"x")
    store.delete("clusters/c/gone.json")
    (tmp_path / "clusters" / "c" / "meta.json.123.partial").write_bytes(b"half")  # killed mid-write
    again = ObjectStore(tmp_path)
    assert again.list("clusters/")[0] == ["clusters/c/meta.json"]
    kept = again.get("clusters/c/meta.json")
    assert kept is not None and kept.data == b'{"topics": {}}' and kept.etag == etag
    assert not (tmp_path / "clusters" / "c" / "meta.json.123.partial").exists()


def test_records_go_once_every_reader_committed_past_them() -> None:
    store = filled(ObjectStore(), "segment-membership", [0, 10, 25, 40])
    policy = RetentionPolicy.parse(["segment-membership=writer,delivery"])
    commit(store, "writer", "segment-membership", 0, 40)
    assert store.trim(policy) == 0  # the delivery group has not committed yet: everything stays
    commit(store, "delivery", "segment-membership", 0, 26)
    assert store.trim(policy) == 25  # both read 0-25: batches 0-9 and 10-24 go, 25-39 is not read through
    assert batches(store, "segment-membership") == [25, 40]
    commit(store, "delivery", "segment-membership", 0, 40)
    assert store.trim(policy) == 15
    assert batches(store, "segment-membership") == [40]  # the newest batch stays: its end is not known
    figures = store.figures()["segment-membership"]
    assert (figures.batches, figures.trimmed_batches, figures.trimmed_records) == (1, 3, 40)


def test_a_trimmed_batch_stays_readable_for_a_fetch_that_listed_it() -> None:
    store = filled(ObjectStore(), "user-events", [0, 10, 20])
    commit(store, "reader", "user-events", 0, 20)
    policy = RetentionPolicy.parse(["user-events=reader"])
    now = time.time()
    assert store.trim(policy, now=now) == 20
    assert batches(store, "user-events") == [20]  # gone from the listings at once
    assert store.get(batch_key("user-events", 0, 0)) is not None  # a fetch that listed it still reads it
    store.trim(policy, now=now + UNLISTED_GRACE_S + 1)
    assert store.get(batch_key("user-events", 0, 0)) is None and len(store) == 2  # the batch at 20, the commit


def test_unnamed_topics_other_prefixes_and_young_records_are_kept() -> None:
    store = ObjectStore()
    for topic in ("segment-rules", "t1-user-events", "user-events"):
        filled(store, topic, [0, 5, 10])
        commit(store, "rule-engine-users", topic, 0, 10)
    policy = RetentionPolicy.parse(["user-events=rule-engine-users"], keep_for_s=60)
    newest = max(o.modified for key in store.list()[0] if (o := store.get(key)) is not None)
    assert store.trim(policy, now=newest + 30) == 0
    assert store.trim(policy, now=newest + 61) == 10
    assert batches(store, "user-events") == [10]
    assert batches(store, "segment-rules") == [0, 5, 10]  # no reader named: kept whole
    assert batches(store, "t1-user-events") == [0, 5, 10]  # its reader is t1-rule-engine-users, not this group
    commit(store, "t1-rule-engine-users", "t1-user-events", 0, 7)
    assert store.trim(policy, now=1e12) == 5 and batches(store, "t1-user-events") == [5, 10]


@pytest.mark.parametrize("spec", ["user-events", "=g", "user-events=", "user-events=,"])
def test_a_retention_spec_names_a_topic_and_its_groups(spec: str) -> None:
    with pytest.raises(ValueError, match="TOPIC=GROUP"):
        RetentionPolicy.parse([spec])


def test_the_longest_topic_name_decides_the_prefix() -> None:
    policy = RetentionPolicy.parse(["email-jobs=email-worker", "jobs=other"])
    assert policy.groups_for("p-email-jobs") == {"p-email-worker"}
    assert policy.groups_for("p-email-jobs-dead-letter") == frozenset()
    assert RetentionPolicy.parse(policy.specs()) == policy
