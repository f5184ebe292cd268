"""The object store under the local broker: Tansu's `s3://` engine keeps every record batch, watermark, offset
commit and its metadata as objects, and this is where they live, in memory or in a directory.

What Tansu needs from a store, and this one gives: conditional writes (create only, or replace only the version
read), reads that answer "not modified" for the version the reader holds, listings in key order, and a reader
never seeing half of an object. What Tansu lacks, and this store adds: its records are dropped once every consumer
group that reads their topic has committed past them (`RetentionPolicy`), so the broker stays as large as what is
still unread, not as large as everything ever sent.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

# A trimmed batch leaves the listings at once but can still be read this long: a fetch lists a partition's
# batches, then reads them one by one, and must not find one gone in between.
UNLISTED_GRACE_S = 10.0
PARTIAL_SUFFIX = ".partial"  # a write a crash interrupted: never acknowledged, removed on start
# clusters/<cluster>/topics/<topic>/partitions/<10 digits>/records/<20 digits>.batch
BATCH_KEY = re.compile(r"^clusters/([^/]+)/topics/([^/]+)/partitions/(\d{10})/records/(\d{20})\.batch$")
# clusters/<cluster>/groups/consumers/<group>/offsets/<topic>/partitions/<10 digits>.json
COMMIT_KEY = re.compile(r"^clusters/([^/]+)/groups/consumers/([^/]+)/offsets/([^/]+)/partitions/(\d{10})\.json$")


class PreconditionFailed(Exception):
    """A conditional write or read whose condition does not hold."""


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    etag: str  # quoted, as S3 sends it
    modified: float  # epoch seconds


@dataclass
class TopicFigures:
    """What the store holds of one topic, and what it dropped."""

    batches: int = 0
    bytes: int = 0
    trimmed_batches: int = 0
    trimmed_records: int = 0


class ObjectStore:
    """Objects in key order, in memory; with `directory`, every write also reaches a file there (replaced by
    rename: a process killed mid-write leaves the old object or the new one), and a new store reads them back.
    One thread uses it (the server's event loop): each call is atomic."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._objects: dict[str, StoredObject] = {}
        self._keys: list[str] = []  # sorted
        self._known_dirs: set[Path] = set()
        self._commits: dict[str, re.Match[str]] = {}  # the offset commits' keys, read by `trim`
        self._listed: dict[str, str] = {}  # key -> its <Contents> element: a fetch lists a partition's batches
        self._unlisted: dict[str, float] = {}  # trimmed batches still readable, until when (oldest first)
        self.trimmed: dict[str, TopicFigures] = {}
        if directory is not None:
            self._load(directory)

    # -- reads --------------------------------------------------------------------------------------

    def get(self, key: str) -> StoredObject | None:
        return self._objects.get(key)

    def listing_entry(self, key: str) -> str:
        """The key's <Contents> element of a ListObjectsV2 answer (made once per version of the object)."""
        entry = self._listed.get(key)
        if entry is None:
            stored = self._objects[key]
            modified = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(stored.modified))
            # what the broker's client reads of it, no more (ETag and StorageClass are optional): a fetch parses
            # one per batch the partition holds
            entry = self._listed[key] = (f"<Contents><Key>{escape(key)}</Key><LastModified>{modified}</LastModified>"
                                         f"<Size>{len(stored.data)}</Size></Contents>")
        return entry

    def __len__(self) -> int:
        return len(self._objects)

    def list(self, prefix: str = "", start_after: str = "", delimiter: str = "",
             max_keys: int = 1000) -> tuple[list[str], list[str], str | None]:
        """Keys under `prefix` after `start_after` (at most `max_keys`, each common prefix counting once), the
        common prefixes up to `delimiter`, and the key to continue after when there are more."""
        keys: list[str] = []
        prefixes: list[str] = []
        if start_after <= prefix:
            at = bisect.bisect_left(self._keys, prefix)
        elif delimiter and start_after.endswith(delimiter):  # a page that ended on a common prefix: past all of it
            at = bisect.bisect_left(self._keys, start_after[:-1] + chr(ord(start_after[-1]) + 1))
        else:
            at = bisect.bisect_right(self._keys, start_after)
        while at < len(self._keys):
            key = self._keys[at]
            if not key.startswith(prefix):
                break
            if len(keys) + len(prefixes) >= max_keys:
                return keys, prefixes, (prefixes[-1] if prefixes and prefixes[-1] > (keys[-1] if keys else "")
                                        else keys[-1])
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut == -1:
                keys.append(key)
                at += 1
            else:
                common = key[:cut + len(delimiter)]
                prefixes.append(common)
                # past every key under this common prefix: the next key not starting with it
                at = bisect.bisect_left(self._keys, common[:-1] + chr(ord(common[-1]) + 1), at)
        return keys, prefixes, None

    # -- writes -------------------------------------------------------------------------------------

    def put(self, key: str, data: bytes, if_match: str | None = None, if_none_match: str | None = None) -> str:
        """Store `data` under `key`; returns its etag. Raises PreconditionFailed when `if_none_match` is "*" and
        the key exists, or when `if_match` names another version (or "*" and the key does not exist)."""
        current = self._objects.get(key)
        if if_none_match == "*" and current is not None:
            raise PreconditionFailed("If-None-Match")
        if if_match is not None and (current is None or (if_match != "*" and if_match != current.etag)):
            raise PreconditionFailed("If-Match")
        stored = StoredObject(data, f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"', time.time())
        if self.directory is not None:
            self._write_file(key, data)
        if current is None or self._unlisted.pop(key, None) is not None:
            bisect.insort(self._keys, key)
            self._note_commit(key)
        self._objects[key] = stored
        self._listed.pop(key, None)
        return stored.etag

    def delete(self, key: str) -> bool:
        """Remove `key`; whether it was there."""
        if self._objects.pop(key, None) is None:
            return False
        if self._unlisted.pop(key, None) is None:
            del self._keys[bisect.bisect_left(self._keys, key)]
        self._commits.pop(key, None)
        self._listed.pop(key, None)
        if self.directory is not None:
            (self.directory / key).unlink(missing_ok=True)
        return True

    # -- retention ----------------------------------------------------------------------------------

    def trim(self, policy: RetentionPolicy, now: float | None = None) -> int:
        """Drop every record batch older than `policy.keep_for_s` that each group reading its topic (as `policy`
        names them) has committed past; returns how many records were dropped. A partition that one of those
        groups has not committed on yet keeps everything."""
        now = time.time() if now is None else now
        kept_since = now - policy.keep_for_s
        for key, until in list(self._unlisted.items()):  # in the order they were trimmed
            if until > now:
                break
            self.delete(key)
        committed: dict[tuple[str, str, str], dict[str, int]] = {}  # (cluster, topic, partition) -> group -> offset
        for key, match in self._commits.items():
            cluster, group, topic, partition = match.groups()
            offset = _committed_offset(self._objects[key].data)
            if offset is not None:
                committed.setdefault((cluster, topic, partition), {})[group] = offset
        dropped = 0
        for (cluster, topic, partition), by_group in committed.items():
            groups = policy.groups_for(topic)
            if not groups or not groups <= by_group.keys():
                continue
            dropped += self._trim_partition(cluster, topic, partition, min(by_group[g] for g in groups), kept_since,
                                            now + UNLISTED_GRACE_S)
        return dropped

    def _trim_partition(self, cluster: str, topic: str, partition: str, committed: int, kept_since: float,
                        readable_until: float) -> int:
        prefix = f"clusters/{cluster}/topics/{topic}/partitions/{partition}/records/"
        batches, _, _ = self.list(prefix=prefix, max_keys=1 << 62)
        offsets = [int(key[len(prefix):len(prefix) + 20]) for key in batches]
        figures = self.trimmed.setdefault(topic, TopicFigures())
        dropped = 0
        # a batch goes once the next one starts at or below the committed offset: all of its records were read
        for key, base, following in zip(batches, offsets, offsets[1:], strict=False):
            if following > committed or self._objects[key].modified > kept_since:
                break
            del self._keys[bisect.bisect_left(self._keys, key)]
            self._listed.pop(key, None)
            self._unlisted[key] = readable_until
            figures.trimmed_batches += 1
            figures.trimmed_records += following - base
            dropped += following - base
        return dropped

    def figures(self) -> dict[str, TopicFigures]:
        """Per topic: the batches and bytes held, and what retention dropped so far."""
        held: dict[str, TopicFigures] = {}
        for key, stored in self._objects.items():
            match = BATCH_KEY.match(key) if key not in self._unlisted else None
            if match is not None:
                figures = held.setdefault(match.group(2), TopicFigures())
                figures.batches += 1
                figures.bytes += len(stored.data)
        for topic, trimmed in self.trimmed.items():
            figures = held.setdefault(topic, TopicFigures())
            figures.trimmed_batches, figures.trimmed_records = trimmed.trimmed_batches, trimmed.trimmed_records
        return dict(sorted(held.items()))

    # -- files --------------------------------------------------------------------------------------

    def _write_file(self, key: str, data: bytes) -> None:
        assert self.directory is not None
        path = self.directory / key
        if path.parent not in self._known_dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._known_dirs.add(path.parent)
        temporary = path.with_name(f"{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
        # small writes to the page cache: a process kill cannot lose them; no fsync (a power cut could)
        temporary.write_bytes(data)
        os.replace(temporary, path)

    def _load(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for root, _, files in os.walk(directory):
            for name in files:
                path = Path(root) / name
                if name.endswith(PARTIAL_SUFFIX):
                    path.unlink(missing_ok=True)
                    continue
                key = path.relative_to(directory).as_posix()
                data = path.read_bytes()
                self._objects[key] = StoredObject(data, f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"',
                                                  path.stat().st_mtime)
        self._keys = sorted(self._objects)
        for key in self._keys:
            self._note_commit(key)

    def _note_commit(self, key: str) -> None:
        if "/offsets/" in key and (match := COMMIT_KEY.match(key)) is not None:
            self._commits[key] = match


def _committed_offset(data: bytes) -> int | None:
    try:
        offset = json.loads(data).get("offset")
    except (ValueError, AttributeError):
        return None
    return offset if isinstance(offset, int) and offset >= 0 else None


@dataclass(frozen=True)
class RetentionPolicy:
    """Which consumer groups must have committed past a record before it may go, by topic. Topics are named
    without the platform's topic prefix: a topic `<prefix><name>` is read by the groups `<prefix><group>`.
    A topic the policy does not name is kept whole."""

    readers: Mapping[str, frozenset[str]] = field(default_factory=dict)
    keep_for_s: float = 0.0  # and every record stays at least this long (for tools and late readers)

    def groups_for(self, topic: str) -> frozenset[str]:
        for name in sorted(self.readers, key=len, reverse=True):  # the longest name that fits
            if topic.endswith(name):
                prefix = topic[:-len(name)]
                return frozenset(prefix + group for group in self.readers[name])
        return frozenset()

    @classmethod
    def parse(cls, specs: Iterable[str], keep_for_s: float = 0.0) -> RetentionPolicy:
        """From `topic=group,group` specs (the server's `--retain` options)."""
        readers: dict[str, frozenset[str]] = {}
        for spec in specs:
            topic, sep, groups = spec.partition("=")
            names = frozenset(g for g in groups.split(",") if g)
            if not sep or not topic or not names:
                raise ValueError(f"--retain wants TOPIC=GROUP[,GROUP…], got {spec!r}")
            readers[topic] = names
        return cls(readers, keep_for_s)

    def specs(self) -> list[str]:
        return [f"{topic}={','.join(sorted(groups))}" for topic, groups in sorted(self.readers.items())]
