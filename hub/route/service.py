"""The hub (``rthub hub``): raw events in, xAPI and Caliper statements out.

One durable pull consumer on the raw stream, shared by every hub process. For each batch: decode, filter
(only events some active grant covers), translate for each protocol a covering grant needs, publish to
``<protocol>.<site>.<org>.<course>.<event>`` with the statement id as ``Nats-Msg-Id`` (a crash between publish
and ack re-publishes the same ids, which the stream drops as duplicates), then ack. Input the hub cannot use
goes to the quarantine stream with its reason; it never blocks the events behind it. When the output side is
unavailable (no stream, no publish ack in time, connection lost) the batch is held instead: in-progress acks
keep its raw messages, and the failed publishes are retried with capped backoff, so an outage of any length
spends none of a message's deliveries. A batch's acks are awaited while the next batch is translated.

No input can stop the hub: size and nesting depth are checked on the bytes before decoding
(:class:`hub.core.events.Limits`), any exception while handling one message quarantines that message, and a
message that is still not acked after ``hub_max_deliver`` deliveries (a hang, a crash, a bug not yet seen) is
moved to quarantine by the server's max-deliveries advisory instead of being redelivered for ever.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from hub.core import trace
from hub.core.api import Header, from_the_server, max_deliveries_advisory
from hub.core.errors import ConsumerGone, JetStreamError, PublishRefused
from hub.core.events import InvalidEvent, normalize
from hub.core.grants import GrantWatcher
from hub.core.groups import (
    CONTROL_PREFIX,
    IDENT_PREFIX,
    Membership,
    apply_control,
    decode_learner,
    identity_of,
    parse_learner_key,
    record_identity,
    with_identity,
)
from hub.core.kv import KVMirror
from hub.core.metrics import Metrics
from hub.core.natsconn import connect
from hub.core.protocols import PROTOCOLS
from hub.core.publish import AckBatch, AckedPublisher
from hub.core.pull import PullStream
from hub.core.settings import HubSettings, from_env
from hub.core.streams import ensure_streams_when_ready
from hub.core.subjects import (
    COURSES_BUCKET,
    LEARNERS_BUCKET,
    OPENEDX_STREAM,
    QUARANTINE_PREFIX,
    QUARANTINE_STREAM,
    RAW_STREAM,
    parse_subject,
    subject,
)
from hub.translate import CourseNames, ExternalIds, Rejected, TranslateContext, supported, translate_json
from hub.translate.base import course_from_kv_key, user_of

log = logging.getLogger("rthub.hub")
REASON_HEADER = "Rthub-Reason"
_HEADER_ROOM = 4096  # headers of a quarantined copy; its body is cut to fit the server's max_payload
_decode = msgspec.json.Decoder().decode
_RETRY_FIRST_S, _RETRY_MAX_S = 0.5, 30.0  # backoff of a held batch's publish retries
_PROBE_S = 1.0  # while a batch is held, how often one of its publishes is tried to see whether the outage is over
_IN_FLIGHT = 2  # batches published and not yet settled: translating the next overlaps waiting for acks


def _outage(exc: BaseException) -> bool:
    """The output side is unavailable (retry later), as opposed to a publish refused for the message itself."""
    if isinstance(exc, PublishRefused):
        return (exc.code or 0) >= 500
    if isinstance(exc, nats.errors.MaxPayloadError):
        return False
    return isinstance(exc, TimeoutError | nats.errors.Error | JetStreamError)


def header_text(text: str, limit: int = 1000) -> str:
    """A header value: one line of printable ASCII (a reason may quote hostile input), at most ``limit``."""
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if " " <= c <= "~" else " " for c in text)[:limit]


def id_secret(s: HubSettings) -> bytes:
    """The deployment's secret for anonymized ids: configured, else created once in the data directory."""
    return ExternalIds.deployment_secret(s.id_secret, s.data_dir)


async def watch_course_names(js, names: CourseNames) -> KVMirror:
    """Keep ``names`` in step with the ``rthub_courses`` bucket (key: :func:`course_kv_key`); returns once loaded."""

    def changed(course: str, name: str | None) -> None:
        if name is None:
            names.delete(course)
        else:
            names.set(course, name)

    return await KVMirror(js, COURSES_BUCKET, lambda b: b.decode("utf-8", "replace"), on_change=changed,
                          key=course_from_kv_key).start()


class Hub:
    stream = RAW_STREAM  # the input stream; the Open edX Events route (hub.route.openedx) reads OPENEDX_EVENTS

    def __init__(self, settings: HubSettings, metrics: Metrics | None = None):
        self.s = settings
        self.consumer = settings.hub_consumer  # the input's durable consumer, shared by every hub process
        self.metrics = metrics or Metrics("hub")
        self.nc = None
        self.js = None
        self.grants: GrantWatcher | None = None
        self.courses = CourseNames()  # kept in step with the rthub_courses bucket by ``_course_names``
        self._course_names: KVMirror | None = None
        self.membership = Membership()  # learner groups, kept in step with the rthub_learners bucket
        self._learners: KVMirror | None = None
        self._ident_out: list[tuple[str, bytes]] = []  # identity copies of the batch in hand (core NATS)
        self._learning: set[tuple[str, str]] = set()
        self._controls: asyncio.Queue = asyncio.Queue()
        self._control_futs: list[asyncio.Future] = []  # membership events of the message in hand, being applied
        self._control_task: asyncio.Task | None = None
        self.pull: PullStream | None = None
        self.publisher: AckedPublisher | None = None
        ids = ExternalIds.from_settings(id_secret(settings), settings.external_ids_file)
        self.contexts = {site: TranslateContext(lms_url=url, ids=ids, courses=self.courses)
                         for site, url in settings.sites.items()}
        self.supported = {p: supported(p) for p in PROTOCOLS}
        self.limits = settings.limits
        self._advisories = None
        self._stop = asyncio.Event()
        self._holding = 0  # batches held for an output outage
        self._settling: set[asyncio.Task] = set()
        self._routes: dict[str, tuple] = {}  # raw subject -> its parts, context and output subjects
        self._translated = dict.fromkeys(PROTOCOLS, 0)  # statements of the batch in hand, counted once per batch

    async def start(self) -> Hub:
        # subjects are built of encoded tokens (hub.core.subjects) or are the server's own: no client-side regex per publish
        self.nc = await connect(self.s, "rthub-hub", skip_subject_validation=True)
        self.js = self.nc.jetstream(timeout=10)
        self.publisher = await AckedPublisher(self.nc).start()
        await ensure_streams_when_ready(self.js, self.s)
        self.grants = await GrantWatcher(self.js).start()
        self._course_names = await watch_course_names(self.js, self.courses)
        self._learners = await KVMirror(self.js, LEARNERS_BUCKET, decode_learner, on_change=self.membership.apply,
                                        key=parse_learner_key).start()
        self._control_task = asyncio.create_task(self._apply_controls())
        # Before the consumer exists: no advisory can be missed. A queue group, so one hub moves each message.
        self._advisories = await self.nc.subscribe(max_deliveries_advisory(self.stream, self.consumer),
                                                   queue="rthub-hub", cb=self._on_max_deliveries)
        await self._ensure_consumer()
        return self

    def _consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.consumer, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.s.hub_ack_wait_s, max_ack_pending=max(4 * self.s.batch_size, 2000),
            max_deliver=self.s.hub_max_deliver,
        )

    async def _ensure_consumer(self) -> None:
        config = self._consumer_config()
        try:
            await self.js.add_consumer(self.stream, config)  # an existing one is updated (editable fields)
        except nats.js.errors.BadRequestError as exc:  # changed settings: keep the existing consumer
            log.warning("hub consumer exists with other settings, using it as is: %s", exc)

    async def run(self, stop: asyncio.Event) -> None:
        """Process batches until ``stop`` is set; the batch in hand is always finished first, and whatever was
        delivered but not processed is handed back at once (:class:`hub.core.pull.PullStream`)."""
        s = self.s
        self._stop = stop
        while not stop.is_set():
            self.pull = pull = await PullStream(
                self.nc, self.stream, self.consumer, batch=2 * s.batch_size, threshold=s.batch_size,
                max_batch=s.batch_size, expires=s.hub_pull_expires_s, room=self._room).start()
            stopper = asyncio.create_task(stop.wait())
            stopper.add_done_callback(lambda _, p=pull: p.stop())
            try:
                async for msgs in pull:
                    await self.process(msgs)
                await self.settled()
                return  # stopped, or the connection closed
            except ConsumerGone:
                log.error("the hub consumer %s was deleted; creating it again", self.consumer)
                await self._ensure_consumer()
            finally:
                stopper.cancel()
                await self.settled()
                for msg in await pull.drain():
                    await msg.nak()

    def _room(self) -> int:
        """Ask for no more raw messages while a batch is held for an output outage (they would age in the queue)."""
        return 0 if self._holding else 2 * self.s.batch_size

    async def process(self, msgs: list) -> None:
        """Publish what each message yields; its acks are awaited in the background (the next batch is translated
        meanwhile, at most ``_IN_FLIGHT`` batches unsettled), then the message is acked (:meth:`_finish`)."""
        m = self.metrics
        m.inc("received", len(msgs))
        batch = AckBatch()
        jobs = []
        controls = []
        for msg in msgs:
            outputs = self._handle(msg)
            jobs.append((msg, outputs, len(batch.results)))
            if self._control_futs:
                controls.append((msg, self._control_futs))
                self._control_futs = []
            for subj, body, headers in outputs:
                await self.publisher.publish(subj, body, headers, batch)
        for msg, futs in controls:  # acked only once applied to the store; a failure is redelivered
            if not all([await f for f in futs]):
                jobs = [j for j in jobs if j[0] is not msg]
                await self._nak(msg)
        if self._ident_out:  # live identity feeds of direct grants: core NATS, never stored in a stream
            for subj, body in self._ident_out:
                await self.nc.publish(subj, body)
            self._ident_out.clear()
        for protocol, n in self._translated.items():
            if n:
                m.inc("translated", n, protocol=protocol)
                self._translated[protocol] = 0
        task = asyncio.create_task(self._finish(jobs, batch))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        if len(self._settling) >= _IN_FLIGHT:
            await asyncio.wait(self._settling, return_when=asyncio.FIRST_COMPLETED)

    async def settled(self) -> None:
        """Wait until every processed batch is acked or handed back."""
        while self._settling:
            await asyncio.wait(self._settling)

    async def _finish(self, jobs, batch: AckBatch) -> None:
        """Ack each message once its publishes are acked. A publish that failed because the output side is
        unavailable (no stream, timeout, connection) holds its messages: in-progress acks keep them and the
        failed publishes are retried with capped backoff, so an outage does not spend ``hub_max_deliver``. A
        message whose publish is refused for itself (e.g. too large) is nak'ed and reaches quarantine. While
        held, one of the failed publishes is retried every second as a probe (the statement id dedupes it): the
        moment it is acked the outage is over, so the rest go at once and the backoff starts again from the
        first delay (a 30 s backoff used to leave the hub idle for up to that long after NATS was back)."""
        delay = _RETRY_FIRST_S
        outage_logged = False
        while True:
            held = await self._settle(jobs, batch)
            if not held:
                if outage_logged:
                    log.info("publishing works again: the held raw messages are published")
                return
            self._holding += 1
            try:
                if not outage_logged:  # one line per outage, not one per retry
                    log.warning("publishing failed (output side unavailable), holding %d raw messages and "
                                "retrying until it is back", len(held))
                    outage_logged = True
                ended = await self._hold([msg for msg, _ in held], delay, held[0][1][0])
                if ended is None:  # stopping, or the connection closed
                    for msg, _ in held:
                        await self._nak(msg)
                    return
            finally:
                self._holding -= 1
                if self.pull is not None:
                    self.pull.wake()
            delay = _RETRY_FIRST_S if ended == "probe" else min(2 * delay, _RETRY_MAX_S)
            batch, jobs = AckBatch(), []
            for msg, outputs in held:
                jobs.append((msg, outputs, len(batch.results)))
                for subj, body, headers in outputs:
                    await self.publisher.publish(subj, body, headers, batch)

    async def _settle(self, jobs, batch: AckBatch) -> list[tuple[Any, list[tuple[str, bytes, dict]]]]:
        """Wait for the publish acks; ack each message whose publishes all succeeded, nak one refused for
        itself, return ``(message, failed outputs)`` of those that failed for an outage (to hold and retry)."""
        results = await batch.wait(self.s.hub_publish_timeout_s)
        if any(isinstance(r, TimeoutError) for r in results):
            self.publisher.forget()
        held = []
        for msg, outputs, start in jobs:
            failed = [(out, r) for out, r in zip(outputs, results[start:start + len(outputs)], strict=True)
                      if isinstance(r, BaseException)]
            if not failed:
                try:
                    await msg.ack()
                except nats.errors.Error as exc:  # connection closed: it is redelivered after the ack wait
                    log.warning("ack failed: %s", exc)
                continue
            self.metrics.inc("publish_errors", len(failed))
            refused = [e for _, e in failed if not _outage(e)]
            if refused:
                log.warning("publish refused, raw message will be redelivered: %s", refused[0])
                await self._nak(msg)
            else:
                held.append((msg, [out for out, _ in failed]))
        return held

    async def _nak(self, msg) -> None:
        # backoff, so a message refused for itself does not spend hub_max_deliver in seconds
        try:
            await msg.nak(delay=min(2 ** (msg.metadata.num_delivered - 1), 60))
        except nats.errors.Error as exc:  # connection closed: it is redelivered after the ack wait
            log.warning("nak failed: %s", exc)

    async def _hold(self, msgs: list, seconds: float, probe: tuple[str, bytes, dict]) -> str | None:
        """Keep ``msgs`` (and what the pull stream delivered meanwhile) from redelivery for ``seconds`` by
        in-progress acks, publishing ``probe`` every :data:`_PROBE_S`: "probe" once it is acked (the output
        side is back), "waited" after ``seconds``, None if the hub is stopping or the connection closed."""
        end = time.monotonic() + seconds
        beat = max(self.s.hub_ack_wait_s / 3, 0.05)
        next_beat = next_probe = time.monotonic()
        while True:
            if self._stop.is_set() or self.nc.is_closed:
                return None
            now = time.monotonic()
            if now >= end:
                return "waited"
            if now >= next_beat:
                next_beat = now + beat
                try:
                    for msg in msgs + (self.pull.queued() if self.pull is not None else []):
                        await msg.in_progress()
                except nats.errors.Error as exc:
                    log.debug("in-progress ack failed: %s", exc)
            if now >= next_probe:
                if await self._probe(probe):
                    return "probe"
                next_probe = time.monotonic() + _PROBE_S
            try:
                await asyncio.wait_for(self._stop.wait(), max(0.0, min(next_beat, next_probe, end) - time.monotonic()))
            except TimeoutError:
                pass

    async def _probe(self, output: tuple[str, bytes, dict]) -> bool:
        """Publish one held output again (deduplicated by its id): True once the output side acks it."""
        subj, body, headers = output
        if not self.nc.is_connected:
            return False
        try:
            await self.publisher.publish_acked(subj, body, headers, timeout=min(self.s.hub_publish_timeout_s, _PROBE_S))
        except (TimeoutError, nats.errors.Error, JetStreamError):
            return False
        return True

    def _handle(self, msg) -> list[tuple[str, bytes, dict]]:
        """``(subject, body, headers)`` of what one message yields: its statements, and the message itself to
        quarantine if it was rejected. Any exception while translating quarantines the message (with the
        exception as reason)."""
        try:
            outputs, rejected = self._translate(msg)
        except (InvalidEvent, ValueError) as exc:
            outputs, rejected = [], [str(exc)]
        except Exception as exc:  # noqa: BLE001 - a bug met by one message must not stop the hub
            log.exception("handling raw message %s failed", msg.metadata.sequence.stream)
            self.metrics.inc("internal_errors")
            outputs, rejected = [], [f"internal error: {type(exc).__name__}: {exc}"]
        out = [(subj, body, {Header.MSG_ID: sid} if gid is None else {Header.MSG_ID: gid, Header.STATEMENT_ID: sid})
               for subj, sid, gid, body in outputs]
        parent = trace.valid((msg.headers or {}).get(trace.HEADER)) if out else None
        if parent:  # W3C trace context: each statement is a child span of the LMS event's trace
            for _, _, headers in out:
                headers[trace.HEADER] = trace.child(parent)
        if rejected:  # a protocol that could not translate it does not hold back the others
            out.insert(0, self._quarantined(msg.subject, msg.data, msg.metadata.sequence.stream,
                                            "; ".join(rejected)))
        return out

    def _translate(self, msg) -> tuple[list[tuple[str, str, str | None, bytes]], list[str]]:
        """``(subject, statement id, group copy's message id or None, body)`` of each statement the message yields
        (and of its group-scoped copies), and each protocol's reason for
        rejecting it; raises :class:`InvalidEvent` (or ``ValueError``) for input that is no usable event."""
        self.limits.check(msg.data)  # size, then nesting depth, before anything decodes it
        route = self._routes.get(msg.subject)
        if route is None:
            route = self._route(msg.subject)
        site, org, course, name, ctx, outputs = route
        try:
            obj = _decode(msg.data)
        except msgspec.DecodeError as exc:
            raise InvalidEvent(f"not JSON: {exc}") from None
        event = normalize(obj, self.limits)
        if name.startswith(CONTROL_PREFIX):  # membership published by the LMS (lms_publisher.groups)
            self._control(site, name, event)
            return [], []
        index = self.grants.index
        plain, grouped = index.routes_for(site, org, course, name)
        user = self._user(event) if grouped or index.any_identity else None
        if user is not None and index.any_identity:
            self._learn(site, user, event)
        member_of = self._member_groups(site, user, grouped) if grouped and user is not None else {}
        protocols = plain | member_of.keys() if member_of else plain
        idents = index.direct_identity_grants(site, org, course, name) if user is not None and index.any_identity else ()
        if not protocols:
            self.metrics.inc("filtered")
            return [], []
        out, rejected = [], []
        for protocol in protocols:
            if name not in self.supported[protocol]:
                self.metrics.inc("unsupported", protocol=protocol)
                continue
            try:
                statements = translate_json(protocol, event, ctx)
            except Rejected as exc:
                rejected.append(f"{protocol}: {exc.reason}")
                continue
            subj = outputs[protocol]
            if protocol in plain:
                out.extend((subj, sid, None, body) for sid, body in statements)
            groups = member_of.get(protocol, ())
            for group in groups:  # group-scoped copies: <subject>.<group>, own msg ids
                out.extend((f"{subj}.{group}", sid, f"{sid}.{group}", body) for sid, body in statements)
            self._translated[protocol] += len(statements)
            for grant in idents:
                if grant.protocol == protocol:
                    self._identity_copies(grant, site, user, subj, groups if protocol not in plain else None,
                                          statements)
        return out, rejected

    def _user(self, event: dict) -> str | None:
        context, data = event.get("context"), event.get("data")
        try:
            return user_of(event, context if isinstance(context, dict) else {}, data if isinstance(data, dict) else {})[0]
        except Rejected:  # no user: in no group, no identity
            return None

    def _identity_copies(self, grant, site: str, user: str, subj: str, groups, statements) -> None:
        """``ident.<grant>.<subject>``: the statements with the grant's approved identity fields, for a direct
        subscriber; only for a learner the store knows (never one retired) and, for a group grant, a member."""
        if grant.learner_groups:
            mine = [g for g in self.membership.groups_of(site, user) if g in grant.learner_groups]
            if not mine:
                return
            subj = f"{subj}.{sorted(mine)[0]}"
        elif groups is not None:
            return  # a plain grant's protocol was translated for group copies only: not this grant's event
        found = identity_of(self.membership.learners.get((site, user)), user, grant.identity)
        if not found:
            return
        for _, body in statements:
            copy = msgspec.json.encode(with_identity(grant.protocol, _decode(body), found))
            self._ident_out.append((f"{IDENT_PREFIX}.{grant.id}.{subj}", copy))

    def _learn(self, site: str, user: str, event: dict) -> None:
        """Keep the store's username / e-mail of a known learner as the LMS events carry them (only while some
        grant is approved for identity; never re-creating a learner that retirement removed)."""
        learner = self.membership.learners.get((site, user))
        if learner is None:
            return
        context, data = event.get("context") or {}, event.get("data") or {}
        username = context.get("username") or event.get("username") if isinstance(context, dict) else None
        email = data.get("email") if isinstance(data, dict) else None
        username = username if isinstance(username, str) and username else None
        email = email if isinstance(email, str) and "@" in email else None
        if (username and username != learner.username) or (email and email != learner.email):
            key = (site, user)
            if key not in self._learning:
                self._learning.add(key)
                task = asyncio.create_task(self._record(site, user, username, email))
                task.add_done_callback(lambda _: self._learning.discard(key))

    async def _record(self, site: str, user: str, username: str | None, email: str | None) -> None:
        try:
            await record_identity(self.js, site, user, username, email)
        except Exception as exc:  # noqa: BLE001 - a missed update is retried at the learner's next event
            log.warning("could not record the identity of learner %s of %s: %s", user, site, exc)

    def _control(self, site: str, name: str, event: dict) -> None:
        """A membership change published by the LMS for its own site (the subject's site; a publisher may only
        publish its own): applied to the store in order by one task; its raw message is acked only once applied
        (:meth:`process`), so a hub stopping in between leaves it to be redelivered."""
        data = event.get("data")
        done = asyncio.get_running_loop().create_future()
        self._controls.put_nowait((site, name, data if isinstance(data, dict) else {}, done))
        self._control_futs.append(done)
        self.metrics.inc("group_changes")

    async def _apply_controls(self) -> None:
        while True:
            site, name, data, done = await self._controls.get()
            try:
                await apply_control(self.js, site, name, data)
                done.set_result(True)
            except ValueError as exc:  # refused for itself (another site's group, no user id): never retried
                log.warning("membership change %s of %s refused: %s", name, site, exc)
                done.set_result(True)
            except (nats.errors.Error, JetStreamError, RuntimeError, TimeoutError) as exc:
                log.warning("membership change %s of %s not applied, will be retried: %s", name, site, exc)
                done.set_result(False)

    def _member_groups(self, site: str, user: str, grouped: dict[str, frozenset[str]]) -> dict[str, list[str]]:
        """``{protocol: groups}``: the groups some grant of the protocol uses that the event's user is in."""
        mine = self.membership.groups_of(site, user)
        if not mine:
            return {}
        return {p: sorted(mine & groups) for p, groups in grouped.items() if not mine.isdisjoint(groups)}

    def _route(self, raw_subject: str) -> tuple:
        """``(site, org, course, name, context, {protocol: output subject})`` of a raw subject, cached (the same
        few courses and event names come again and again)."""
        _, site, org, course, name = parse_subject(raw_subject)
        ctx = self.contexts.get(site)
        if ctx is None:
            raise InvalidEvent(f"unknown site {site!r} (configure it in RTHUB_SITES)")
        if len(self._routes) >= 100_000:
            self._routes.clear()
        route = self._routes[raw_subject] = (site, org, course, name, ctx,
                                             {p: subject(p, site, org, course, name) for p in PROTOCOLS})
        return route

    def _quarantined(self, raw_subject: str, data: bytes, seq: int, reason: str) -> tuple[str, bytes, dict]:
        """The quarantine copy of raw message ``seq`` with its reason (one copy per sequence): what to publish."""
        self.metrics.inc("quarantined")
        reason = header_text(reason)
        log.warning("quarantined raw message %s: %s", seq, reason)
        tokens = raw_subject.split(".", 1)
        subj = f"{QUARANTINE_PREFIX}.{tokens[1]}" if len(tokens) == 2 else f"{QUARANTINE_PREFIX}.unknown"
        headers = {REASON_HEADER: reason, "Rthub-Subject": header_text(raw_subject), "Rthub-Raw-Seq": str(seq),
                   Header.MSG_ID: f"q-{seq}", Header.EXPECTED_STREAM: QUARANTINE_STREAM}
        room = max(self.nc.max_payload - _HEADER_ROOM, 0)
        if len(data) > room:  # the server would refuse it (and close our connection); the original stays raw
            headers["Rthub-Original-Bytes"] = str(len(data))
            data = data[:room]
        return subj, data, headers

    async def _on_max_deliveries(self, advisory) -> None:
        """A raw message was delivered ``hub_max_deliver`` times and never acked: fetch it, quarantine it."""
        if not from_the_server(advisory):
            log.warning("ignored a max-deliveries advisory not sent by the server (reply %s)", advisory.reply)
            return
        try:
            info = msgspec.json.decode(advisory.data)
            seq = int(info["stream_seq"])
            raw = await self.js.get_msg(self.stream, seq)
            self.metrics.inc("max_deliveries")
            reason = (f"not acknowledged after {info.get('deliveries', self.s.hub_max_deliver)} deliveries "
                      "(RTHUB_HUB_MAX_DELIVER): the hub failed or stalled on it, or could not publish its statements")
            copy = self._quarantined(raw.subject, raw.data or b"", seq, reason)
            await asyncio.wait_for(await self.publisher.publish(*copy), self.s.hub_publish_timeout_s)
        except (nats.errors.Error, JetStreamError, TimeoutError, msgspec.DecodeError, KeyError, TypeError,
                ValueError) as exc:  # e.g. the message aged out of the raw stream (NotFoundError)
            log.error("could not quarantine after max deliveries (%s): %s", advisory.data[:200], exc)

    def healthy(self) -> bool:
        """Connected, and the pull loop woke within 30 s (it wakes at least every heartbeat when idle)."""
        alive = self.pull is None or time.monotonic() - self.pull.last_tick < 30
        return bool(self.nc and self.nc.is_connected and alive)

    async def close(self) -> None:
        if self._advisories is not None:
            try:
                await self._advisories.unsubscribe()
            except (nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError):
                pass  # closed with the connection
        if self.grants:
            await self.grants.stop()
        if self._course_names:
            await self._course_names.stop()
        if self._learners:
            await self._learners.stop()
        if self._control_task:
            self._control_task.cancel()
        if self.publisher:
            await self.publisher.close()
        if self.nc and not self.nc.is_closed:
            # Every fetched message was acked or nak'ed before run() returned; flush the acks and close
            # (drain() waits on the watchers' ordered consumers until its 30 s timeout).
            try:
                await self.nc.flush(5)
            except nats.errors.Error as exc:  # disconnected: unacked messages are redelivered
                log.warning("flush at close failed: %s", exc)
            await self.nc.close()


async def serve(settings: HubSettings, stop: asyncio.Event | None = None, ready=None) -> int:
    """Run one hub process until SIGTERM/SIGINT (or ``stop``); in-flight work is finished, then exit 0."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (ValueError, RuntimeError):  # not the main thread
            pass
    hub = await Hub(settings).start()
    # What start-up made lives as long as the process: out of the collector's way, so full collections stay
    # short and do not show in the tail latency.
    gc.freeze()
    hub.metrics.healthy = hub.healthy
    lag = asyncio.create_task(hub.metrics.poll_lag(  # the hub consumer is shared: every hub reports the same lag
        hub.js, "hub_lag", lambda: [(RAW_STREAM, settings.hub_consumer, {"consumer": settings.hub_consumer})] + (
            [(OPENEDX_STREAM, settings.openedx_consumer, {"consumer": settings.openedx_consumer})]
            if settings.openedx_topics else []),
        settings.lag_poll_s))
    port = await hub.metrics.serve(settings.metrics_port, settings.metrics_host) if settings.metrics_port >= 0 else None
    log.info("hub running", extra={"fields": {"nats": settings.nats_url, "metrics_port": port,
                                              "sites": sorted(settings.sites)}})
    hub.openedx = None
    if settings.openedx_topics:  # Open edX Events from the event bus: a second input, its own durable consumer
        from hub.route.openedx import OpenedxHub

        hub.openedx = await OpenedxHub(settings, hub.metrics).start()
    if ready:
        ready(hub)
    try:
        await asyncio.gather(hub.run(stop), *([hub.openedx.run(stop)] if hub.openedx else []))
    finally:
        if hub.openedx is not None:
            await hub.openedx.close()
        lag.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.remove_signal_handler(sig)
            except (ValueError, RuntimeError):
                pass
        await hub.close()
        await hub.metrics.close()
        log.info("hub stopped", extra={"fields": {k[0]: v for k, v in hub.metrics.counters.items()}})
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("hub", help="run the hub service: filter, translate, route (scale out by running more)")
    p.add_argument("--nats-url", help="NATS server URL(s), comma-separated (RTHUB_NATS_URL)")
    p.add_argument("--metrics-port", type=int, help="serve /metrics and /health here; 0 picks a free port, -1 none")
    p.add_argument("--batch-size", type=int, help="raw events fetched per batch (RTHUB_BATCH_SIZE)")
    p.set_defaults(func=lambda a: asyncio.run(serve(from_env(
        HubSettings, nats_url=a.nats_url, metrics_port=a.metrics_port, batch_size=a.batch_size))))
