"""Who may publish and subscribe to what: least-privilege allow lists for every service and consumer.

Pure functions over the names in :mod:`hub.core.subjects` and :mod:`hub.core.grants`, so the tables are tested without a
server. Every user gets a private inbox prefix instead of ``_INBOX.>``: replies (JetStream acks, KV values,
including webhook secrets read by the deliverer) would otherwise be readable by any other user of the account.
Clients must therefore connect with ``inbox_prefix=`` (:func:`hub.core.creds.inbox_prefix_of` reads it back from a JWT).
"""

from __future__ import annotations

from hub.core.grants import Grant, consumer_name, replay_name
from hub.core.protocols import PROTOCOLS
from hub.core.subjects import (
    BUS_API_PREFIX,
    COURSES_BUCKET,
    DEAD_LETTER_STREAM,
    DELIVERY_LOG_STREAM,
    DELIVERY_STATE_BUCKET,
    GRANTS_BUCKET,
    GROUPS_BUCKET,
    LEARNERS_BUCKET,
    OPENEDX_DLQ_PREFIX,
    OPENEDX_DLQ_STREAM,
    OPENEDX_PREFIX,
    OPENEDX_STREAM,
    PARTS_STREAM,
    PROTOCOL_STREAMS,
    QUARANTINE_STREAM,
    RAW_STREAM,
    REDRIVE_STREAM,
    TARGETS_BUCKET,
    TENANT_API_PREFIX,
    encode_token,
)

API = "$JS.API"
PROTOCOL_PREFIXES = tuple(p.prefix for p in PROTOCOLS.values())
SERVICES = ("publisher", "hub", "deliverer", "portal", "event-bus", "admin")
HUB_STREAMS = (RAW_STREAM, *PROTOCOL_STREAMS.values(), QUARANTINE_STREAM, DEAD_LETTER_STREAM, OPENEDX_STREAM,
               OPENEDX_DLQ_STREAM,
               *(f"KV_{b}" for b in (GRANTS_BUCKET, TARGETS_BUCKET, COURSES_BUCKET, GROUPS_BUCKET, LEARNERS_BUCKET)))


def service_inbox(service: str) -> str:
    return f"_INBOX_svc_{service}"


def consumer_inbox(grant_id: str) -> str:
    """A consumer's private inbox; ``_INBOX_c_`` never collides with a service's ``_INBOX_svc_``."""
    return f"_INBOX_c_{grant_id}"


def durable(stream: str, consumer: str) -> list[str]:
    """Create/bind/pull/ack one named durable consumer, and nothing on any other consumer."""
    return [f"{API}.CONSUMER.INFO.{stream}.{consumer}", f"{API}.CONSUMER.CREATE.{stream}.{consumer}",
            f"{API}.CONSUMER.CREATE.{stream}.{consumer}.>", f"{API}.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
            f"{API}.CONSUMER.MSG.NEXT.{stream}.{consumer}", f"$JS.ACK.{stream}.{consumer}.>"]


def stream_reader(stream: str) -> list[str]:
    """Read a whole stream: any consumer on it (create, info, pull, ack, delete) and single-message gets."""
    return [f"{API}.STREAM.INFO.{stream}", f"{API}.CONSUMER.CREATE.{stream}", f"{API}.CONSUMER.CREATE.{stream}.>",
            f"{API}.CONSUMER.DURABLE.CREATE.{stream}.*", f"{API}.CONSUMER.INFO.{stream}.*",
            f"{API}.CONSUMER.DELETE.{stream}.*", f"{API}.CONSUMER.MSG.NEXT.{stream}.*",
            f"{API}.CONSUMER.LIST.{stream}", f"{API}.CONSUMER.NAMES.{stream}", f"$JS.ACK.{stream}.>",
            f"$JS.FC.{stream}.>", f"{API}.STREAM.MSG.GET.{stream}", f"{API}.DIRECT.GET.{stream}",
            f"{API}.DIRECT.GET.{stream}.>"]


def kv_read(bucket: str) -> list[str]:
    """Get, list and watch a KV bucket (a watch is an ordered push consumer on ``KV_<bucket>``)."""
    return stream_reader(f"KV_{bucket}")


def kv_write(bucket: str) -> list[str]:
    return [*kv_read(bucket), f"$KV.{bucket}.>"]


def stream_owner(stream: str) -> list[str]:
    """Declare (create/update, never delete or purge) one stream."""
    return [f"{API}.STREAM.INFO.{stream}", f"{API}.STREAM.CREATE.{stream}", f"{API}.STREAM.UPDATE.{stream}"]


def consumer_admin(stream: str) -> list[str]:
    """Manage the durable consumers of a stream (create with filters, inspect, delete) without pulling."""
    return [f"{API}.STREAM.INFO.{stream}", f"{API}.CONSUMER.CREATE.{stream}.*", f"{API}.CONSUMER.CREATE.{stream}.*.>",
            f"{API}.CONSUMER.DURABLE.CREATE.{stream}.*", f"{API}.CONSUMER.INFO.{stream}.*",
            f"{API}.CONSUMER.DELETE.{stream}.*", f"{API}.CONSUMER.LIST.{stream}", f"{API}.CONSUMER.NAMES.{stream}"]


def _dedup(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def service_permissions(service: str, hub_consumer: str = "hub",
                        site: str | None = None) -> tuple[list[str] | None, list[str] | None]:
    """``(pub_allow, sub_allow)`` of a service user; ``None`` = unrestricted (the admin only). ``site`` scopes
    a publisher to the raw events of one LMS site."""
    inbox = [f"{service_inbox(service)}.>"]
    # Account and stream info (metadata only) for all: every service runs ensure_streams() at start, which
    # only reads when the streams are already as declared; creating or changing them is the hub's right.
    info = [f"{API}.INFO", f"{API}.STREAM.INFO.*"]
    protocol_streams = list(PROTOCOL_STREAMS.values())
    if service == "admin":
        return None, None
    if service == "publisher":
        # Runs inside the LMS, the least trusted place: it may only add raw events of its own site, and read
        # nothing (not even stream info). The hub declares the streams.
        return [f"lms.{encode_token(site)}.>" if site is not None else "lms.>"], inbox
    if service == "event-bus":
        # The Open edX event bus (lms_publisher.event_bus) in the LMS and its consuming services: a user of the
        # bus's own account (LMS-BUS), which imports from the data account only what the bus needs
        # (:func:`bus_imports`): its JetStream API under BUS_API_PREFIX, the Open edX topics, the dead letters.
        return [local for _, _, local, _, _ in bus_imports()], inbox
    if service == "hub":
        # STREAM.MSG.GET on the raw stream and the max-deliveries advisory of its own consumer: how it moves
        # a message that was never acked to quarantine (hub/route/service.py).
        # Open edX Events (hub/route/openedx.py): its own durable on OPENEDX_EVENTS (RTHUB_OPENEDX_CONSUMER,
        # default hub_openedx), the same max-deliveries guard.
        pub = [*info, *(p for s in HUB_STREAMS for p in stream_owner(s)), *durable(RAW_STREAM, hub_consumer),
               f"{API}.STREAM.MSG.GET.{RAW_STREAM}", *durable(OPENEDX_STREAM, "hub_openedx"),
               f"{API}.STREAM.MSG.GET.{OPENEDX_STREAM}",
               *(f"{p}.>" for p in PROTOCOL_PREFIXES), "quarantine.>", *kv_read(GRANTS_BUCKET), *kv_read(COURSES_BUCKET),
               # learner groups: membership events from the LMS are applied by the hub; identity copies of
               # direct grants go out on ident.<grant>.> (core NATS)
               *kv_write(GROUPS_BUCKET), *kv_write(LEARNERS_BUCKET), "ident.>"]
        sub = [*inbox, f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{RAW_STREAM}.{hub_consumer}",
               f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{OPENEDX_STREAM}.hub_openedx"]
        return _dedup(pub), sub
    if service == "deliverer":
        pub = [*info, *(p for s in protocol_streams for p in stream_reader(s)), "dlq.>",
               *stream_reader(DEAD_LETTER_STREAM), f"{API}.STREAM.MSG.DELETE.{DEAD_LETTER_STREAM}",
               *(p for s in (DELIVERY_LOG_STREAM, REDRIVE_STREAM, PARTS_STREAM, f"KV_{DELIVERY_STATE_BUCKET}")
                 for p in stream_owner(s)),
               *stream_reader(DELIVERY_LOG_STREAM), "attempts.>", *stream_reader(REDRIVE_STREAM), "redrive.>",
               *stream_reader(PARTS_STREAM),
               *kv_write(DELIVERY_STATE_BUCKET), *kv_read(GRANTS_BUCKET), *kv_write(TARGETS_BUCKET),
               *kv_read(COURSES_BUCKET), *kv_read(LEARNERS_BUCKET)]
        # Core subscriptions to the protocol subjects and redrive.>: wake-ups of dozing pull loops (engine/watch.py).
        sub = [*inbox, *(f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{s}.*" for s in protocol_streams),
               *(f"{p}.>" for p in PROTOCOL_PREFIXES), "redrive.>"]
        return _dedup(pub), sub
    if service == "portal":
        pub = [*info, *(p for s in protocol_streams for p in consumer_admin(s)),
               *kv_write(GRANTS_BUCKET), *kv_write(TARGETS_BUCKET), *kv_write(COURSES_BUCKET),
               *kv_write(GROUPS_BUCKET), *kv_write(LEARNERS_BUCKET), *kv_read(DELIVERY_STATE_BUCKET), *stream_reader(DEAD_LETTER_STREAM),
               *stream_reader(DELIVERY_LOG_STREAM), f"{API}.CONSUMER.LIST.{PARTS_STREAM}",  # partitioned lag
               # The consumer's delivery operations (hub/deliver/actions.py): resend gets one statement by sequence
               # (never pulls); redrive, resend and test events go to redrive.<id>; redrive removes the dead
               # letter; replay / retry-now / re-enable write their key in the delivery state bucket.
               *(f"{API}.STREAM.MSG.GET.{s}" for s in protocol_streams), "redrive.>",
               f"{API}.STREAM.MSG.DELETE.{DEAD_LETTER_STREAM}",
               *(f"$KV.{DELIVERY_STATE_BUCKET}.{k}.>" for k in ("replay", "retry", "failing"))]
        return _dedup(pub), inbox
    raise ValueError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")


def consumer_permissions(grant: Grant) -> tuple[list[str], list[str]]:
    """A direct subscriber, a user of its own account (:func:`tenant_imports`): pull and ack its one durable
    consumer, its private inbox, and a core subscription to the granted subjects for a live feed.

    Its account has no JetStream and holds nothing but these imports, so even a reply subject of its choice
    (``$JS.API.STREAM.PURGE.X``) is answered inside its own account, never in the data account.
    """
    pub = [local for _, _, kind, local in tenant_imports(grant) if kind == "service"]
    live = grant.filter_subjects()
    # `<...>.>` lets clients use the usual `xapi.*.<org>.<course>.>` form for the live feed; beyond the five
    # tokens it only adds the group-scoped copies of the same statements (a subset of what the grant covers).
    # A grant with learner groups has six-token subjects ending in its group names: no wildcard is added.
    live += [f[:-1] + ">" for f in live if f.endswith(".*")]
    sub = [f"{consumer_inbox(grant.id)}.>", *live, *([f"ident.{grant.id}.>"] if grant.identity else [])]
    return pub, sub


def hub_exports() -> list[tuple[str, str, str, bool]]:
    """``(name, subject, kind, stream_response)`` the data account offers direct subscribers (pull requests
    get a stream of replies: one per message of the batch, then a status). Every one needs
    an activation naming the importing account and an exact subject (:func:`tenant_imports`), so the
    wildcards here give no account more than its own consumer and its granted subjects."""
    # LMS sites' accounts publish their raw events through this (hub/auth/store.py: one activation per site).
    out: list[tuple[str, str, str, bool]] = [("lms raw events", "lms.>", "service", False)]
    for protocol, stream in PROTOCOL_STREAMS.items():
        out += [(f"pull {stream}", f"{API}.CONSUMER.MSG.NEXT.{stream}.*", "service", True),
                (f"consumer info {stream}", f"{API}.CONSUMER.INFO.{stream}.*", "service", False),
                (f"ack {stream}", f"$JS.ACK.{stream}.*.>", "service", False),
                (f"live {protocol}", f"{protocol}.>", "stream", False)]
    out.append(("ident", "ident.>", "stream", False))  # identity copies of direct grants approved for them
    out += [(name, subj, kind, stream) for name, subj, _, kind, stream in bus_imports()]  # the event bus's account
    return out


def bus_imports() -> list[tuple[str, str, str, str, bool]]:
    """``(name, subject in the data account, subject in the bus's account, kind, stream_response)``: everything
    the event bus's account (LMS-BUS) imports. Publish Open edX events and dead letters; run consumer groups on
    OPENEDX_EVENTS (any durable: groups are configuration of the services; offset_time deletes and re-creates a
    group's), pull and ack them; read and remove dead letters. The JetStream API is renamed to
    ``BUS_API_PREFIX``: in an account without JetStream the server answers ``$JS.API`` itself. Any reply subject
    the bus names crosses as a server-made ``_R_`` subject and is answered in its own account."""
    api = [(f"STREAM.INFO.{OPENEDX_STREAM}", False), (f"STREAM.INFO.{OPENEDX_DLQ_STREAM}", False),
           (f"CONSUMER.CREATE.{OPENEDX_STREAM}.>", False), (f"CONSUMER.DURABLE.CREATE.{OPENEDX_STREAM}.*", False),
           (f"CONSUMER.INFO.{OPENEDX_STREAM}.*", False), (f"CONSUMER.DELETE.{OPENEDX_STREAM}.*", False),
           (f"CONSUMER.MSG.NEXT.{OPENEDX_STREAM}.*", True), (f"STREAM.MSG.GET.{OPENEDX_DLQ_STREAM}", False),
           (f"STREAM.MSG.DELETE.{OPENEDX_DLQ_STREAM}", False)]
    plain = [(f"{OPENEDX_PREFIX}.>", "bus events"), (f"{OPENEDX_DLQ_PREFIX}.>", "bus dead letters"),
             (f"$JS.ACK.{OPENEDX_STREAM}.>", "bus acks")]
    return [*((name, subj, subj, "service", False) for subj, name in plain),
            *((f"bus {a}", f"{API}.{a}", f"{BUS_API_PREFIX}.{a}", "service", stream) for a, stream in api)]


def tenant_imports(grant: Grant) -> list[tuple[str, str, str, str]]:
    """``(name, subject, kind, local subject)`` one direct subscriber's account imports from the data account.

    Its own consumer's ``CONSUMER.INFO`` and ``MSG.NEXT`` are also imported under :data:`TENANT_API_PREFIX`: in
    an account without JetStream the server answers ``$JS.API`` itself (503), so the idiomatic clients
    (nats.js ``js.consumers.get()`` / ``consume()``, nats-py ``pull_subscribe``) use that prefix; the plain
    ``$JS.API`` pull stays for ``pull_subscribe_bind``."""
    stream, name = PROTOCOL_STREAMS[grant.protocol], consumer_name(grant.id)
    replay = replay_name(grant.id)  # a replay (request_replay) is pulled and acked the same way
    info, pull = f"CONSUMER.INFO.{stream}.{name}", f"CONSUMER.MSG.NEXT.{stream}.{name}"
    services = [("pull", f"{API}.{pull}", None), ("ack", f"$JS.ACK.{stream}.{name}.>", None),
                ("replay pull", f"{API}.CONSUMER.MSG.NEXT.{stream}.{replay}", None),
                ("replay ack", f"$JS.ACK.{stream}.{replay}.>", None),
                ("info (api prefix)", f"{API}.{info}", f"{TENANT_API_PREFIX}.{info}"),
                ("pull (api prefix)", f"{API}.{pull}", f"{TENANT_API_PREFIX}.{pull}")]
    return [*((n, subj, "service", local or subj) for n, subj, local in services),
            *((f"live {i}", subj, "stream", subj) for i, subj in enumerate(grant.filter_subjects())),
            *([("ident", f"ident.{grant.id}.>", "stream", f"ident.{grant.id}.>")] if grant.identity else [])]
