"""The portal's SMTP client against a real aiosmtpd server on 127.0.0.1: STARTTLS with a certificate checked
against a given CA, AUTH over the encrypted channel, and clear failures (wrong CA, wrong password)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from portal import mail
from portal.settings import PortalSettings
from tests.mailbox import Mailbox, body


def self_signed(tmp_path, name: str) -> tuple[str, str]:
    """A certificate for 127.0.0.1 that is its own CA; returns ``(cert path, key path)``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"portal", b"mail-pass")
    return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535 itself


@pytest.fixture
def tls_mailbox(tmp_path):
    cert, key = self_signed(tmp_path, "smtp")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    box = Mailbox(tls_context=context, require_starttls=True, authenticator=authenticator, auth_required=True).start()
    yield box, cert
    box.stop()


def settings_for(box: Mailbox, tmp_path, **over) -> PortalSettings:
    base = dict(data_dir=str(tmp_path), smtp_host="127.0.0.1", smtp_port=box.port, smtp_tls="starttls",
                smtp_user="portal", smtp_password="mail-pass", mail_from="portal@rthub.test")
    base.update(over)
    return PortalSettings(**base)


async def test_starttls_and_auth(tls_mailbox, tmp_path):
    box, cert = tls_mailbox
    await mail.send(settings_for(box, tmp_path, smtp_ca_file=cert), "you@example.org", "Hello",
                    "Link: http://portal.test/verify?token=t1\n")
    got = await box.wait("you@example.org", "Hello")
    assert got["From"] == "portal@rthub.test" and "verify?token=t1" in body(got)
    assert not (tmp_path / "outbox").exists()


async def test_untrusted_certificate_and_wrong_password_fail_clearly(tls_mailbox, tmp_path):
    box, cert = tls_mailbox
    other, _ = self_signed(tmp_path, "other")
    with pytest.raises(mail.MailError, match="SSLCertVerificationError"):
        await mail.send(settings_for(box, tmp_path, smtp_ca_file=other), "you@example.org", "No", "x\n")
    with pytest.raises(mail.MailError, match="SMTPAuthenticationError"):
        await mail.send(settings_for(box, tmp_path, smtp_ca_file=cert, smtp_password="wrong"), "you@example.org",
                        "No", "x\n")
    assert box.to("you@example.org", "No") == []
