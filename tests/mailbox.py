"""A real SMTP server for tests (aiosmtpd, on a free 127.0.0.1 port, in its own thread) that keeps every
mail it receives, and helpers to wait for one and pull its link out."""

from __future__ import annotations

import email
import email.policy
import re
import threading

from aiosmtpd.controller import Controller

from hub.ops.natsserver import free_port
from tests.helpers import wait_for


class Mailbox:
    def __init__(self, **smtp_options):
        """``smtp_options`` go to aiosmtpd's SMTP (``tls_context``, ``require_starttls``, ``authenticator``...)."""
        self.messages: list[email.message.EmailMessage] = []
        self.lock = threading.Lock()
        self.controller = Controller(self, hostname="127.0.0.1", port=free_port(), **smtp_options)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(msg)
        return "250 OK"

    def start(self) -> Mailbox:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    @property
    def port(self) -> int:
        return self.controller.port

    def env(self) -> dict[str, str]:
        """Portal settings that send to this server."""
        return {"RTHUB_SMTP_HOST": "127.0.0.1", "RTHUB_SMTP_PORT": str(self.port), "RTHUB_SMTP_TLS": "none",
                "RTHUB_MAIL_FROM": "portal@rthub.test"}

    def to(self, address: str, subject: str = "") -> list[email.message.EmailMessage]:
        with self.lock:
            return [m for m in self.messages if address.lower() in m["To"].lower() and subject in m["Subject"]]

    async def wait(self, address: str, subject: str = "", count: int = 1, timeout: float = 10.0):
        await wait_for(lambda: len(self.to(address, subject)) >= count, timeout, f"mail {subject!r} to {address}")
        return self.to(address, subject)[count - 1]


def body(msg) -> str:
    return msg.get_body(("plain",)).get_content()


def link(msg, path: str) -> str:
    """The first link in ``msg`` to ``path`` (e.g. ``/verify``)."""
    found = re.search(r"https?://\S+" + re.escape(path) + r"\S*", body(msg))
    assert found, f"no {path} link in: {body(msg)}"
    return found.group(0)
