"""The mail the worker builds: text or text + HTML, List-Unsubscribe that survives serialization, and a DKIM
signature that verifies against the published key and breaks when the mail is changed."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from amctl.k8s.render import load
from server.domain.email import EmailJob
from server.email_worker.signing import DkimSigner, dkim_signer
from server.email_worker.smtp import SmtpSender, build_message
from server.runtime.errors import ConfigurationError
from server.runtime.secrets import new_key
from server.runtime.settings import ServiceSettings
from server.runtime.tokens import UnsubscribeTokens

pytestmark = pytest.mark.unit
SENDER = "Audience Manager <campaigns@news.example.com>"
TOKEN = UnsubscribeTokens(new_key()).token("0b9f6a3e-4a51-4d0e-9d7e-3f1c2b7a8e55", "user-with-a-longer-id-00042")
URL = f"https://communication.news.example.com/unsubscribe/{TOKEN}"
MAILTO = f"mailto:unsubscribe@news.example.com?subject=unsubscribe%20{TOKEN}"


def job(**changes: str | None) -> EmailJob:
    fields = {"campaign_id": "0b9f6a3e-4a51-4d0e-9d7e-3f1c2b7a8e55", "user_id": "user-with-a-longer-id-00042",
              "to": "ann@example.com", "subject": "Hello Ann", "body": "Hi Ann,\nyour offer.\n",
              "body_html": None, "unsubscribe_url": URL, "unsubscribe_mailto": MAILTO} | changes
    return EmailJob(queued_at=datetime(2026, 1, 1, tzinfo=UTC), **fields)  # type: ignore[arg-type]


def parsed(data: bytes) -> EmailMessage:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def text_of(part: EmailMessage) -> str:
    return str(part.get_content()).replace("\r\n", "\n")  # the parser keeps SMTP's line endings


def raw_header(data: bytes, name: str) -> str:
    """The header's value as sent: unfolded, not decoded (what a mailbox provider reads)."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    match = re.search(rf"^{re.escape(name)}:[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", head,
                      re.MULTILINE | re.IGNORECASE)
    assert match is not None, f"no {name} header in\n{head}"
    return re.sub(r"\r\n(?=[ \t])", "", match.group(1))


def test_a_text_mail_is_one_part_with_the_campaign_headers() -> None:
    data = build_message(job(), SENDER).as_bytes()
    message = parsed(data)
    assert not message.is_multipart() and message.get_content_type() == "text/plain"
    assert text_of(message) == "Hi Ann,\nyour offer.\n"
    assert message["X-Campaign-Id"] == "0b9f6a3e-4a51-4d0e-9d7e-3f1c2b7a8e55"
    assert message["X-User-Id"] == "user-with-a-longer-id-00042"
    assert message["Message-ID"].endswith("@audience-manager>") and message["Date"]
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")  # SMTP line endings only


def test_an_html_mail_is_multipart_alternative_with_the_text_first() -> None:
    message = parsed(build_message(job(body_html="<p>Hi <b>Ann</b></p>"), SENDER).as_bytes())
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert text_of(parts[0]) == "Hi Ann,\nyour offer.\n"
    assert text_of(parts[1]).strip() == "<p>Hi <b>Ann</b></p>"


def test_list_unsubscribe_carries_the_whole_url_and_mailto_unencoded() -> None:
    assert len(TOKEN) >= 90  # the real token length, the case a line-length fold would break
    data = build_message(job(), SENDER).as_bytes()
    value = raw_header(data, "List-Unsubscribe")
    assert "=?" not in value  # an RFC 2047 encoded-word is a broken link to a mailbox provider
    assert [t.strip() for t in value.split(",")] == [f"<{URL}>", f"<{MAILTO}>"]
    assert raw_header(data, "List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert parsed(data)["List-Unsubscribe"] == f"<{URL}>, <{MAILTO}>"  # and any client reads it back the same


def test_the_mailto_is_offered_only_when_set_and_no_link_means_no_headers() -> None:
    without_mailto = parsed(build_message(job(unsubscribe_mailto=None), SENDER).as_bytes())
    assert without_mailto["List-Unsubscribe"] == f"<{URL}>"
    assert without_mailto["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    neither = parsed(build_message(job(unsubscribe_url=None, unsubscribe_mailto=None), SENDER).as_bytes())
    assert neither["List-Unsubscribe"] is None and neither["List-Unsubscribe-Post"] is None
    mailto_only = parsed(build_message(job(unsubscribe_url=None), SENDER).as_bytes())
    assert mailto_only["List-Unsubscribe"] == f"<{MAILTO}>"
    assert mailto_only["List-Unsubscribe-Post"] is None  # one-click is a POST to a URL: none to offer


def test_long_non_ascii_subjects_are_still_encoded_as_usual() -> None:
    subject = "Grüße aus der Stadt, " * 8
    data = build_message(job(subject=subject), SENDER).as_bytes()
    assert "=?utf-8?" in raw_header(data, "Subject")
    assert parsed(data)["Subject"] == subject


# -- DKIM -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey, pkcs8: bool = False) -> bytes:
    form = serialization.PrivateFormat.PKCS8 if pkcs8 else serialization.PrivateFormat.TraditionalOpenSSL
    return key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption())


def small_key() -> rsa.RSAPrivateKey:
    """A 648-bit key (two Mersenne primes): too small to sign with, and too small for cryptography to generate."""
    p, q, e = 2**521 - 1, 2**127 - 1, 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q),
                                    rsa.RSAPublicNumbers(e, p * q))
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)


def dns_for(key: rsa.RSAPrivateKey, name: bytes = b"mail2026._domainkey.news.example.com.") -> object:
    """A resolver that answers the selector's TXT record with `key`'s public half, as DNS would."""
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)

    def txt(query: bytes, timeout: float = 5) -> bytes | None:
        return record if query == name else None

    return txt


def settings(**values: object) -> ServiceSettings:
    return ServiceSettings(**values)  # type: ignore[arg-type]


def test_a_signed_mail_verifies_and_a_changed_one_does_not(rsa_key: rsa.RSAPrivateKey) -> None:
    signer = dkim_signer(settings(email_dkim_domain="news.example.com", email_dkim_selector="mail2026",
                                  email_dkim_private_key=SecretStr(pem(rsa_key).decode())))
    assert signer is not None
    sender = SmtpSender("127.0.0.1", 25, 5, SENDER, signer=signer)
    data = sender.serialize(job(body_html="<p>Hi Ann</p>"))
    assert data.startswith(b"DKIM-Signature: ")
    assert dkim.verify(data, dnsfunc=dns_for(rsa_key))
    signature = raw_header(data, "DKIM-Signature")
    signed = re.search(r"\bh=([^;]*)", signature)
    assert signed is not None
    assert [h.strip() for h in signed.group(1).split(":")] == [
        "from", "to", "subject", "date", "message-id", "list-unsubscribe", "list-unsubscribe-post"]
    assert "c=relaxed/relaxed" in signature and "d=news.example.com" in signature and "s=mail2026" in signature
    assert not dkim.verify(data.replace(b"your offer.", b"your 0ffer."), dnsfunc=dns_for(rsa_key))
    assert not dkim.verify(data.replace(TOKEN.encode(), TOKEN[::-1].encode()), dnsfunc=dns_for(rsa_key))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert not dkim.verify(data, dnsfunc=dns_for(other))  # signed with this key, not any key


def test_the_key_can_come_from_a_file_in_pkcs8(rsa_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    key_file = tmp_path / "private-key"
    key_file.write_bytes(pem(rsa_key, pkcs8=True))
    signer = dkim_signer(settings(email_dkim_domain="news.example.com", email_dkim_selector="mail2026",
                                  email_dkim_key_file=key_file))
    assert isinstance(signer, DkimSigner)
    assert dkim.verify(signer.sign(build_message(job(), SENDER).as_bytes()), dnsfunc=dns_for(rsa_key))
    assert "BEGIN" not in repr(signer)  # the key stays out of logs


def test_signing_is_off_without_a_domain_even_with_a_key_file(tmp_path: Path) -> None:
    # on Kubernetes the key file setting is always there, the Secret (and so the domain) only when made
    assert dkim_signer(settings(email_dkim_key_file=tmp_path / "absent")) is None
    assert not SmtpSender("127.0.0.1", 25, 5, SENDER).serialize(job()).startswith(b"DKIM-Signature")


def test_dkim_settings_that_cannot_sign_refuse_the_start_naming_the_setting(
        rsa_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    good = SecretStr(pem(rsa_key).decode())
    small = SecretStr(pem(small_key()).decode())
    key_file = tmp_path / "private-key"
    key_file.write_bytes(pem(rsa_key))
    both = {"email_dkim_domain": "news.example.com", "email_dkim_selector": "mail2026"}
    cases: list[tuple[dict[str, object], str]] = [
        ({"email_dkim_domain": "news.example.com", "email_dkim_private_key": good}, "without AM_EMAIL_DKIM_SELECTOR"),
        ({"email_dkim_selector": "mail2026", "email_dkim_private_key": good}, "without AM_EMAIL_DKIM_DOMAIN"),
        (both, "no key is: set AM_EMAIL_DKIM_KEY_FILE"),
        (both | {"email_dkim_private_key": SecretStr("not a key")}, "AM_EMAIL_DKIM_PRIVATE_KEY: not an RSA private"),
        (both | {"email_dkim_private_key": small}, "AM_EMAIL_DKIM_PRIVATE_KEY: the RSA key has 648 bits"),
        (both | {"email_dkim_key_file": tmp_path / "missing"}, "AM_EMAIL_DKIM_KEY_FILE: cannot read"),
        (both | {"email_dkim_key_file": key_file, "email_dkim_private_key": good}, "both set"),
    ]
    for values, message in cases:
        with pytest.raises(ConfigurationError, match=re.escape(message)) as refused:
            dkim_signer(settings(**values))
        assert "\n" not in str(refused.value) and "PRIVATE KEY-----" not in str(refused.value)


def test_the_email_worker_refuses_to_start_with_one_line_naming_the_setting() -> None:
    env = {**os.environ, "AM_EMAIL_DKIM_DOMAIN": "news.example.com", "AM_EMAIL_DKIM_SELECTOR": "",
           "AM_PORT": "0", "AM_STARTUP_WAIT_S": "1"}
    done = subprocess.run([sys.executable, "-m", "server.email_worker"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].endswith(
        "refusing to start: AM_EMAIL_DKIM_DOMAIN is set without AM_EMAIL_DKIM_SELECTOR; set both or neither")


def test_on_kubernetes_the_worker_reads_dkim_from_an_optional_secret() -> None:
    _, manifests = load("demo-8g")
    worker = next(m for m in manifests if m["kind"] == "Deployment" and m["metadata"]["name"] == "email-worker")
    pod = worker["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    for name, key in (("AM_EMAIL_DKIM_DOMAIN", "domain"), ("AM_EMAIL_DKIM_SELECTOR", "selector")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "audience-manager-dkim", "key": key,
                                                          "optional": True}
    key_file = Path(env["AM_EMAIL_DKIM_KEY_FILE"]["value"])
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == key_file.parent)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert mount["readOnly"] is True
    assert volume["secret"] == {"secretName": "audience-manager-dkim", "optional": True, "defaultMode": 0o440,
                                "items": [{"key": "private-key", "path": key_file.name}]}
    others = [m for m in manifests if m["kind"] == "Deployment" and m["metadata"]["name"] != "email-worker"]
    assert all("audience-manager-dkim" not in str(m) for m in others)  # only the worker that signs gets the key
