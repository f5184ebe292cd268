"""Sealing the secrets the platform keeps for others: destination signing secrets and their headers.

They are stored sealed (Fernet: AES-128-CBC with an HMAC) under AM_SECRETS_KEY, so a database dump
alone does not reveal them; only the process holding the key can open them. They are never logged.
"""

from __future__ import annotations

import base64
import secrets

from cryptography.fernet import Fernet, InvalidToken

from server.runtime.errors import DependencyUnavailable

SIGNING_SECRET_PREFIX = "whsec_"
SIGNING_SECRET_BYTES = 24


class SecretsUnavailable(DependencyUnavailable):
    """AM_SECRETS_KEY is not set (or cannot open what is stored): destinations cannot be used."""

    def __init__(self, detail: str) -> None:
        super().__init__("secrets", detail, retry_after_s=60)


class SecretBox:
    """Seals and opens short texts with one key; `SecretBox("")` refuses both, saying what to set."""

    def __init__(self, key: str) -> None:
        try:
            self._fernet: Fernet | None = Fernet(key.encode()) if key else None
        except ValueError:
            raise ValueError("AM_SECRETS_KEY must be 32 bytes in urlsafe base64 (amctl generates one)") from None

    @property
    def enabled(self) -> bool:
        return self._fernet is not None

    def _key(self) -> Fernet:
        if self._fernet is None:
            raise SecretsUnavailable("AM_SECRETS_KEY is not set, so destination secrets cannot be sealed or opened")
        return self._fernet

    def seal(self, text: str) -> str:
        return self._key().encrypt(text.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._key().decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise SecretsUnavailable("a stored secret does not open with AM_SECRETS_KEY (was the key changed?)") \
                from None


def new_key() -> str:
    """A fresh AM_SECRETS_KEY."""
    return Fernet.generate_key().decode()


def new_signing_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and the base64 of 24 random bytes."""
    return SIGNING_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SIGNING_SECRET_BYTES)).decode()


def secret_hint(secret: str) -> str:
    """What may be shown of a secret: its prefix and last four characters."""
    return f"{SIGNING_SECRET_PREFIX}…{secret[-4:]}"
