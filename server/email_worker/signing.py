"""DKIM signatures (RFC 6376) for outgoing mail, with the domain, selector and key from the settings.

Mailbox providers expect bulk mail to be signed by the sending domain; the public key is published as a
TXT record at `SELECTOR._domainkey.DOMAIN`. The key is loaded and tried once when the worker is built, so a
wrong setting stops the worker at start instead of failing every mail.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dkim
import dkim.crypto

from server.runtime.errors import ConfigurationError
from server.runtime.settings import ServiceSettings

# What a receiver must see unchanged; absent ones are signed too, so they cannot be added on the way
SIGNED_HEADERS = (b"From", b"To", b"Subject", b"Date", b"Message-ID", b"List-Unsubscribe", b"List-Unsubscribe-Post")
# relaxed/relaxed: refolded headers and re-wrapped whitespace in transit do not break the signature
CANONICALIZATION = (b"relaxed", b"relaxed")
MIN_KEY_BITS = 1024  # receivers ignore signatures made with smaller RSA keys (RFC 8301)
_TRIAL_MESSAGE = b"From: check@example.invalid\r\nSubject: check\r\n\r\ncheck\r\n"


@dataclass(frozen=True)
class DkimSigner:
    """Signs serialized messages as `domain` with the key published under `selector`."""

    domain: str
    selector: str
    private_key: bytes = field(repr=False)  # PEM, PKCS#1 or PKCS#8

    def signature(self, message: bytes) -> bytes:
        """The `DKIM-Signature:` header line (CRLF-terminated) for `message` (CRLF line endings)."""
        return bytes(dkim.sign(message, self.selector.encode(), self.domain.encode(), self.private_key,
                               canonicalize=CANONICALIZATION, include_headers=list(SIGNED_HEADERS)))

    def sign(self, message: bytes) -> bytes:
        """`message` with its DKIM-Signature header prepended."""
        return self.signature(message) + message


def _key_from(settings: ServiceSettings) -> bytes:
    inline = settings.email_dkim_private_key.get_secret_value().strip()
    path = settings.email_dkim_key_file
    if inline and path is not None:
        raise ConfigurationError("AM_EMAIL_DKIM_PRIVATE_KEY and AM_EMAIL_DKIM_KEY_FILE are both set; keep one")
    if inline:
        return inline.encode()
    if path is None:
        raise ConfigurationError("AM_EMAIL_DKIM_DOMAIN is set but no key is: set AM_EMAIL_DKIM_KEY_FILE to a PEM "
                                 "file or AM_EMAIL_DKIM_PRIVATE_KEY to the PEM text")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"AM_EMAIL_DKIM_KEY_FILE: cannot read {path}: {exc.strerror or exc}") from None


def dkim_signer(settings: ServiceSettings) -> DkimSigner | None:
    """The signer the settings ask for, or None when AM_EMAIL_DKIM_DOMAIN and _SELECTOR are both empty.

    ConfigurationError, naming the setting, when only one of them is set or the key cannot sign."""
    domain, selector = settings.email_dkim_domain.strip(), settings.email_dkim_selector.strip()
    if not domain and not selector:
        return None
    if not selector:
        raise ConfigurationError("AM_EMAIL_DKIM_DOMAIN is set without AM_EMAIL_DKIM_SELECTOR; set both or neither")
    if not domain:
        raise ConfigurationError("AM_EMAIL_DKIM_SELECTOR is set without AM_EMAIL_DKIM_DOMAIN; set both or neither")
    key = _key_from(settings)
    where = "AM_EMAIL_DKIM_KEY_FILE" if settings.email_dkim_key_file is not None else "AM_EMAIL_DKIM_PRIVATE_KEY"
    try:
        bits = dkim.crypto.parse_pem_private_key(key)["modulus"].bit_length()
    except (dkim.DKIMException, dkim.UnparsableKeyError) as exc:  # their messages name the format, never the key
        raise ConfigurationError(f"{where}: not an RSA private key in PEM (PKCS#1 or PKCS#8): "
                                 f"{str(exc).splitlines()[0]}") from None
    if bits < MIN_KEY_BITS:
        raise ConfigurationError(f"{where}: the RSA key has {bits} bits; receivers ignore DKIM keys under "
                                 f"{MIN_KEY_BITS} (use 2048)")
    signer = DkimSigner(domain, selector, key)
    try:
        signer.signature(_TRIAL_MESSAGE)  # the whole path once, so no mail is the first to fail
    except dkim.DKIMException as exc:
        raise ConfigurationError(f"{where}: the key cannot sign: {str(exc).splitlines()[0]}") from None
    return signer
