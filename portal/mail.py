"""Outgoing mail: a real SMTP client (stdlib ``smtplib`` in a thread) when ``RTHUB_SMTP_HOST`` is set, else
an outbox folder ``<data_dir>/outbox`` (one ``.eml`` file per mail, 0600) with the mail's links printed, so
``rthub up`` works on a laptop without a mail server."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import smtplib
import ssl
import time
import uuid
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from portal.settings import PortalSettings

log = logging.getLogger("rthub.portal.mail")
LINK = re.compile(r"https?://\S+")


class MailError(Exception):
    """The mail could not be handed to the SMTP server."""


def compose(settings: PortalSettings, to: str, subject: str, body: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = settings.mail_from
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=settings.mail_from.rsplit("@", 1)[-1].strip("> ") or "localhost")
    msg.set_content(body)
    return msg


def _smtp_send(settings: PortalSettings, msg: EmailMessage) -> None:
    tls = settings.smtp_tls.lower()
    context = ssl.create_default_context(cafile=settings.smtp_ca_file or None)
    cls = smtplib.SMTP_SSL if tls == "tls" else smtplib.SMTP
    kwargs = {"context": context} if tls == "tls" else {}
    with cls(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout_s, **kwargs) as smtp:
        if tls == "starttls":
            smtp.starttls(context=context)
        if settings.smtp_user:
            smtp.login(settings.smtp_user, settings.smtp_password)
        smtp.send_message(msg)


def _write_outbox(settings: PortalSettings, msg: EmailMessage) -> Path:
    folder = Path(settings.data_dir) / "outbox"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.eml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(msg.as_bytes())
    return path


async def send(settings: PortalSettings, to: str, subject: str, body: str) -> None:
    """Send one plain-text mail; raises :class:`MailError` when the SMTP server cannot take it."""
    msg = compose(settings, to, subject, body)
    if not settings.smtp_host:
        path = _write_outbox(settings, msg)
        links = " ".join(LINK.findall(body))
        # The outbox is the development default: the person at the terminal is the mail reader.
        print(f"mail to {to}: {subject} ({path}){' ' + links if links else ''}", flush=True)
        return
    try:
        await asyncio.to_thread(_smtp_send, settings, msg)
    except (OSError, smtplib.SMTPException) as exc:
        log.error("mail to the SMTP server %s:%s failed: %s", settings.smtp_host, settings.smtp_port,
                  type(exc).__name__)
        raise MailError(f"the mail server did not take the message ({type(exc).__name__})") from None
