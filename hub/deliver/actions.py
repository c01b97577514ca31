"""Operator actions shared by the CLI and the portal: dead letters, redrive, replay, test events.

Redrive and test events go to ``redrive.<grant id>`` (stream REDRIVE), which only that integration's
deliverer consumes, so other consumers of the protocol stream never see them twice. Replay creates the
consumer ``rthub_<grant id>_replay`` on the protocol stream from a start time with the grant's filters:
deliverers send it like live traffic (same statement ids) and delete it once caught up; a direct-subscription
consumer binds to it itself.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid

import msgspec
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, KeyNotFoundError, NoStreamResponseError, NotFoundError

from hub.core.errors import NoStream, PublishRefused
from hub.core.grants import decode_grant, replay_name
from hub.core.subjects import (
    DEAD_LETTER_STREAM,
    DELIVERY_STATE_BUCKET,
    GRANTS_BUCKET,
    PROTOCOL_STREAMS,
    dlq_subject,
    redrive_subject,
    subject,
    subject_matches,
)
from hub.deliver.state.records import H_ID, H_SEQ, H_STREAM, H_SUBJECT, POSITION, DeadLetterHeaders


class DeadLetter(msgspec.Struct, kw_only=True):
    seq: int
    grant_id: str
    statement_id: str
    reason: str
    last_status: int
    response: str
    subject: str
    failed_at: str
    time: float


def parse_time(text: str) -> dt.datetime:
    """ISO 8601 (``2024-05-01T10:00:00Z``) or a relative age such as ``2h`` / ``3d`` before now."""
    from hub.deliver.settings import seconds

    try:
        return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds(text))
    except ValueError:
        pass
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


async def _scan(js: JetStreamContext, stream: str, filter_subject: str, since: dt.datetime | None = None):
    """Every message of ``filter_subject`` in ``stream`` (from ``since``), oldest first, without a consumer."""
    try:
        info = await js.stream_info(stream, subjects_filter=filter_subject)
    except NotFoundError:
        return
    if not info.state.subjects:
        return
    seq = info.state.first_seq
    if since is not None:
        try:
            seq = max(seq, await _first_seq_since(js, stream, since))
        except NotFoundError:
            return
    while seq <= info.state.last_seq:
        try:
            msg = await js.get_msg(stream, seq=seq, subject=filter_subject, next=True)
        except NotFoundError:
            return
        yield msg
        seq = msg.seq + 1


async def _first_seq_since(js: JetStreamContext, stream: str, since: dt.datetime) -> int:
    """The first sequence at or after ``since`` (a short-lived consumer asks the server to find it)."""
    sub = await js.pull_subscribe("", stream=stream, config=ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since, ack_policy=AckPolicy.NONE,
        inactive_threshold=5.0))
    try:
        info = await sub.consumer_info()
        if info.num_pending == 0:
            raise NotFoundError
        msgs = await sub.fetch(1, timeout=2)
        return msgs[0].metadata.sequence.stream
    finally:
        await sub.unsubscribe()


def _dead_letter(grant_id: str, msg) -> DeadLetter:
    h = DeadLetterHeaders.from_headers(msg.headers)
    return DeadLetter(seq=msg.seq, grant_id=grant_id, statement_id=h.statement_id, reason=h.reason,
                      last_status=h.last_status, response=h.response, subject=h.subject, failed_at=h.failed_at,
                      time=_msg_time(msg))


def _msg_time(msg) -> float:
    stamp = DeadLetterHeaders.from_headers(msg.headers).failed_at
    if stamp:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return time.time()


async def list_dead_letters(js: JetStreamContext, grant_id: str, limit: int = 1000) -> list[DeadLetter]:
    out = []
    async for msg in _scan(js, DEAD_LETTER_STREAM, dlq_subject(grant_id)):
        out.append(_dead_letter(grant_id, msg))
        if len(out) >= limit:
            break
    return out


async def redrive(js: JetStreamContext, grant_id: str, seqs: list[int] | None = None,
                  since: dt.datetime | None = None, until: dt.datetime | None = None) -> int:
    """Send dead letters back for delivery (all, the given sequences, or those failed in a time range).

    Each is re-published to ``redrive.<grant id>`` with its original headers, then removed from the
    dead-letter stream. Returns how many were redriven.
    """
    count = 0
    async for msg in _scan(js, DEAD_LETTER_STREAM, dlq_subject(grant_id)):
        if seqs is not None and msg.seq not in seqs:
            continue
        failed = _msg_time(msg)
        if (since and failed < since.timestamp()) or (until and failed > until.timestamp()):
            continue
        h = msg.headers or {}
        headers = {k: h[k] for k in POSITION if k in h}
        await _publish(js, redrive_subject(grant_id), msg.data, headers=headers)
        await js.delete_msg(DEAD_LETTER_STREAM, msg.seq)
        count += 1
    return count


async def _publish(js: JetStreamContext, subject: str, data: bytes, headers: dict[str, str]) -> None:
    """``js.publish`` with the core's precise errors: :class:`NoStream` (no stream stores ``subject``) or
    :class:`PublishRefused` (the stream's code and description); ``TimeoutError`` when nobody answers."""
    try:
        await js.publish(subject, data, headers=headers)
    except NoStreamResponseError:
        raise NoStream(f"no stream stores {subject}", 503) from None
    except APIError as exc:
        raise PublishRefused.from_error(exc.code or 0, exc.err_code or 0, exc.description or str(exc)) from None


async def _grant(js: JetStreamContext, grant_id: str):
    kv = await js.key_value(GRANTS_BUCKET)
    try:
        entry = await kv.get(grant_id)
    except KeyNotFoundError:
        raise LookupError(f"no integration {grant_id!r}") from None
    if not entry.value:
        raise LookupError(f"no integration {grant_id!r}")
    return decode_grant(entry.value)


async def request_replay(js: JetStreamContext, grant_id: str, since: dt.datetime) -> dict:
    """(Re)create the replay consumer of ``grant_id`` from ``since``; returns what will be replayed."""

    grant = await _grant(js, grant_id)
    stream = PROTOCOL_STREAMS[grant.protocol]
    name = replay_name(grant_id)
    try:
        await js.delete_consumer(stream, name)
    except NotFoundError:
        pass
    info = await js.add_consumer(stream, ConsumerConfig(
        name=name, durable_name=name, filter_subjects=grant.filter_subjects(),
        deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since, ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30.0, inactive_threshold=7 * 86400.0, description=f"replay of {grant_id} since {since.isoformat()}"))
    state = await js.key_value(DELIVERY_STATE_BUCKET)
    await state.put(f"replay.{grant_id}", since.isoformat().encode())
    return {"integration": grant_id, "stream": stream, "consumer": name, "since": since.isoformat(),
            "statements": info.num_pending, "delivery": grant.delivery}


def test_statement(protocol: str, grant_id: str) -> tuple[str, bytes]:
    """A harmless statement (xAPI) or event (Caliper) marked as a test, with a fresh id."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    sid = str(uuid.uuid4())
    if protocol == "caliper":
        body = {"@context": "http://purl.imsglobal.org/ctx/caliper/v1p2", "id": f"urn:uuid:{sid}",
                "type": "Event", "action": "Used", "eventTime": now,
                "actor": {"id": "urn:rthub:test-actor", "type": "Agent"},
                "object": {"id": f"urn:rthub:integration:{grant_id}", "type": "SoftwareApplication"},
                "extensions": {"rthub_test_event": True}}
        return f"urn:uuid:{sid}", msgspec.json.encode(body)
    body = {"id": sid, "timestamp": now,
            "actor": {"objectType": "Agent", "account": {"homePage": "urn:rthub", "name": "test"}},
            "verb": {"id": "http://adlnet.gov/expapi/verbs/experienced", "display": {"en": "experienced"}},
            "object": {"objectType": "Activity", "id": f"urn:rthub:integration:{grant_id}",
                       "definition": {"name": {"en": "rthub test event"}}},
            "context": {"extensions": {"urn:rthub:test-event": True}}}
    return sid, msgspec.json.encode(body)


async def send_test_event(js: JetStreamContext, grant_id: str) -> str:
    """Queue a test statement for the integration's endpoint; returns its id (see the attempt log)."""
    grant = await _grant(js, grant_id)
    sid, body = test_statement(grant.protocol, grant_id)
    subj = subject(grant.protocol, "rthub-test", None, None, "rthub.test")
    await _publish(js, redrive_subject(grant_id), body, headers={H_SUBJECT: subj, H_ID: sid})
    return sid


async def retry_now(js: JetStreamContext, grant_id: str) -> None:
    """End the backoff of every failing delivery of ``grant_id``: each is tried again at once."""
    await _grant(js, grant_id)
    state = await js.key_value(DELIVERY_STATE_BUCKET)
    await state.put(f"retry.{grant_id}", str(time.time()).encode())


async def resend(js: JetStreamContext, grant_id: str, seq: int) -> str:
    """Deliver one statement again (same id, same body) through ``redrive.<grant id>``: the message ``seq`` of
    the integration's protocol stream (an attempt's ``seqs``), only if it lies within the grant's subjects.
    Returns the statement id; ``LookupError`` when it is gone or not this integration's."""
    grant = await _grant(js, grant_id)
    stream = PROTOCOL_STREAMS[grant.protocol]
    try:
        msg = await js.get_msg(stream, seq=seq)
    except NotFoundError:
        raise LookupError(f"message {seq} is no longer in the {stream} stream") from None
    if not any(subject_matches(f, msg.subject) for f in grant.filter_subjects()):
        raise LookupError(f"message {seq} is not one of {grant_id}'s statements")
    h = msg.headers or {}
    sid = h.get(H_ID) or h.get("Nats-Msg-Id") or _body_id(msg.data) or ""
    await _publish(js, redrive_subject(grant_id), msg.data, headers={
        H_SUBJECT: msg.subject, H_ID: sid, H_STREAM: stream, H_SEQ: str(seq)})
    return sid


async def statements(js: JetStreamContext, grant_id: str, seqs: list[int], limit: int = 5) -> list[bytes | None]:
    """The stored bodies of the first ``limit`` of ``seqs`` (an attempt's statements) in the integration's protocol
    stream, each only if it lies within the grant's subjects; ``None`` for one that expired or is not its."""
    grant = await _grant(js, grant_id)
    stream = PROTOCOL_STREAMS[grant.protocol]
    subjects = grant.filter_subjects()
    out: list[bytes | None] = []
    for seq in seqs[:limit]:
        try:
            msg = await js.get_msg(stream, seq=seq) if seq > 0 else None
        except NotFoundError:
            msg = None
        out.append(msg.data if msg is not None and any(subject_matches(f, msg.subject) for f in subjects)
                   else None)
    return out


def _body_id(data: bytes) -> str | None:
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    return str(value.get("id")) if isinstance(value, dict) and value.get("id") else None
