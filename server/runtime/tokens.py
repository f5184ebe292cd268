"""Unsubscribe tokens, one per (campaign, user), and the links they make: the one-click URL and the mailto.

A token is the (campaign, user) pair sealed with AES-SIV under a key derived from AM_SECRETS_KEY:
authenticated (a changed or made-up token does not open, so one user's token cannot name another) and
encrypted (no user id in clear), and deterministic, so a job rendered again carries the same URL. No
database row is needed to read one back.
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.parse
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from server.runtime.secrets import SecretsUnavailable

MAX_TOKEN_CHARS = 512


class InvalidUnsubscribeToken(ValueError):
    """The token was not made with this key (tampered, truncated, or from another installation)."""


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    campaign_id: str
    user_id: str


class UnsubscribeTokens:
    def __init__(self, secrets_key: str) -> None:
        if secrets_key:
            raw = base64.urlsafe_b64decode(secrets_key.encode())
            derived = HKDF(hashes.SHA256(), length=64, salt=None, info=b"audience-manager unsubscribe").derive(raw)
            self._siv: AESSIV | None = AESSIV(derived)
        else:
            self._siv = None

    @property
    def enabled(self) -> bool:
        return self._siv is not None

    def _cipher(self) -> AESSIV:
        if self._siv is None:
            raise SecretsUnavailable("AM_SECRETS_KEY is not set, so unsubscribe links cannot be signed; "
                                     "amctl sets it (on k8s it is the audience-manager-secrets Secret)")
        return self._siv

    def token(self, campaign_id: str, user_id: str) -> str:
        plain = json.dumps([campaign_id, user_id], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(self._cipher().encrypt(plain, None)).decode().rstrip("=")

    def read(self, token: str) -> Unsubscribe:
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise InvalidUnsubscribeToken("not an unsubscribe token")
        try:
            sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            campaign_id, user_id = json.loads(self._cipher().decrypt(sealed, None))
        except (InvalidTag, binascii.Error, ValueError, TypeError):
            raise InvalidUnsubscribeToken("not an unsubscribe token of this installation") from None
        return Unsubscribe(str(campaign_id), str(user_id))


@dataclass(frozen=True)
class UnsubscribeLinks:
    """The two List-Unsubscribe targets of one recipient's mail: the one-click URL and a mailto."""

    tokens: UnsubscribeTokens
    base_url: str
    mailto_address: str

    def require(self) -> None:
        """SecretsUnavailable (a 503 saying what to set) when links cannot be signed."""
        self.tokens.token("check", "check")

    def url(self, campaign_id: str, user_id: str) -> str:
        return f"{self.base_url}/unsubscribe/{self.tokens.token(campaign_id, user_id)}"

    def mailto(self, campaign_id: str, user_id: str) -> str:
        subject = urllib.parse.quote(f"unsubscribe {self.tokens.token(campaign_id, user_id)}")
        return f"mailto:{self.mailto_address}?subject={subject}"
