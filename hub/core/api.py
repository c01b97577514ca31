"""JetStream protocol constants: the status codes, headers and API subjects the services speak.

The server answers a pull request, a publish or an API call with a status line (``NATS/1.0 408 Request
Timeout``) or a JSON body; these names replace the literals ``"404"``, ``"408"``... scattered before.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Status(StrEnum):
    """The ``Status`` header of a control message (never of a stored message: those have an ack subject)."""

    CONTROL = "100"  # idle heartbeat (``Description: Idle Heartbeat``) or flow control
    NO_MESSAGES = "404"  # a ``no_wait`` pull request found nothing
    REQUEST_TIMEOUT = "408"  # a pull request expired; ``Nats-Pending-Messages`` says how many it still owed
    CONFLICT = "409"  # the request ended: consumer deleted, leadership change, max waiting/bytes exceeded...
    NO_RESPONDERS = "503"  # nobody listens on the subject: no stream for a publish, no consumer for a pull


class Header(StrEnum):
    STATUS = "Status"
    DESCRIPTION = "Description"
    MSG_ID = "Nats-Msg-Id"
    EXPECTED_STREAM = "Nats-Expected-Stream"
    PENDING_MESSAGES = "Nats-Pending-Messages"  # on a 408/409: messages the ended request never delivered
    PENDING_BYTES = "Nats-Pending-Bytes"
    STATEMENT_ID = "Rthub-Statement-Id"  # a group-scoped copy's statement id (its Nats-Msg-Id adds the group)


class ErrCode(IntEnum):
    """``err_code`` of a JetStream API error the services react to (the server's ``errors.json``)."""

    CONSUMER_NOT_FOUND = 10014
    STREAM_NOT_FOUND = 10059
    STREAM_NOT_MATCH = 10060  # Nats-Expected-Stream did not match
    MESSAGE_TOO_LARGE = 10054
    WRONG_LAST_MSG_ID = 10070
    WRONG_LAST_SEQUENCE = 10071


IDLE_HEARTBEAT = "Idle Heartbeat"
CONSUMER_DELETED = "Consumer Deleted"


def pull_subject(stream: str, durable: str, prefix: str = "$JS.API") -> str:
    """Where pull requests for a durable consumer go (``prefix``: the JetStream API as the account sees it)."""
    return f"{prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"


def max_deliveries_advisory(stream: str, durable: str) -> str:
    """The server's advisory when a message of ``stream`` reached ``durable``'s ``max_deliver``."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{durable}"


def from_the_server(msg) -> bool:
    """Whether an advisory was sent by the server itself. A push consumer (which the event bus may create on
    OPENEDX_EVENTS) can deliver its stream's messages to any subject of the data account, the hub's exact
    advisory subjects included; such a delivery always carries a ``$JS.ACK`` reply (and maybe headers), a
    server advisory never does."""
    return not msg.reply and not msg.headers


def status_of(msg) -> str | None:
    """The status of a control message, else None. A stored message is never one, even if a publisher forged a
    ``Status`` header: it carries an ack subject (``$JS.ACK...``) and control messages carry none."""
    headers = msg.headers
    if not headers or msg.reply:
        return None
    return headers.get(Header.STATUS)
