"""API keys with scopes: what the settings hold, and who a presented key belongs to.

A key is given as `key:scope` (scope `read`, `write` or `admin`; admin ⊇ write ⊇ read) in
`AM_API_KEYS` (comma-separated) and/or `AM_API_KEYS_FILE` (one per line, `#` comments), the
form a Kubernetes Secret mounts. Only SHA-256 digests of the keys are kept in memory, a
presented key is compared with every digest in constant time, and no message, log line or
metric carries a key: a key is named by `key_id`, a short prefix of its digest.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

MIN_KEY_CHARS = 16


class Scope(IntEnum):
    """What a key may do; a higher scope includes every lower one."""

    READ = 1
    WRITE = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def named(cls, name: str) -> Scope:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown scope '{name.strip()}' (read, write or admin)") from None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: which key (by digest prefix, never the key) and its scope."""

    key_id: str
    scope: Scope


@dataclass(frozen=True)
class _StoredKey:
    digest: bytes
    scope: Scope


def parse_api_keys(text: str, source: str) -> list[tuple[str, Scope]]:
    """`key:scope` entries separated by commas or newlines; messages name the entry, never the key."""
    entries: list[tuple[str, Scope]] = []
    for number, raw in enumerate((e.strip() for line in text.splitlines() for e in line.split(",")), start=1):
        if not raw or raw.startswith("#"):
            continue
        key, sep, scope = raw.rpartition(":")
        if not sep or not key:
            raise ValueError(f"{source}, entry {number}: expected key:scope")
        if len(key) < MIN_KEY_CHARS:
            raise ValueError(f"{source}, entry {number}: a key needs at least {MIN_KEY_CHARS} characters")
        try:
            entries.append((key, Scope.named(scope)))
        except ValueError as exc:
            raise ValueError(f"{source}, entry {number}: {exc}") from None
    return entries


def read_api_keys(inline: str, file: Path | None) -> list[tuple[str, Scope]]:
    """Every configured key: the inline ones, then the file's; a repeated key is an error."""
    entries = parse_api_keys(inline, "AM_API_KEYS")
    if file is not None:
        try:
            text = file.read_text()
        except OSError as exc:
            raise ValueError(f"AM_API_KEYS_FILE: cannot read {file}: {exc.strerror}") from None
        entries += parse_api_keys(text, "AM_API_KEYS_FILE")
    if len({key for key, _ in entries}) != len(entries):
        raise ValueError("AM_API_KEYS/AM_API_KEYS_FILE: the same key is listed twice")
    return entries


class ApiKeys:
    """The configured keys, as digests; `authenticate` answers who a presented key belongs to."""

    def __init__(self, entries: list[tuple[str, Scope]]) -> None:
        self._keys = [_StoredKey(_digest(key), scope) for key, scope in entries]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, presented: str) -> Principal | None:
        digest = _digest(presented)
        found: _StoredKey | None = None
        for stored in self._keys:  # no early exit: every lookup costs the same
            if hmac.compare_digest(stored.digest, digest):
                found = stored
        return Principal(digest.hex()[:12], found.scope) if found else None


