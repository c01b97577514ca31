"""Typed JSON shapes of the API routes (msgspec structs), so OpenAPI documents every request and answer."""

from __future__ import annotations

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from msgspec import UNSET, UnsetType

from hub.deliver.state.records import Attempt
from portal.deliveries import EndpointState
from portal.validation import Scope


class ApiError(msgspec.Struct, kw_only=True):
    """Every refusal of the JSON API: a message for a person and, for a form-like body, one per field."""

    error: str
    errors: dict[str, str] | UnsetType = UNSET


# The refusals any API route may answer with (documented once, attached to every API handler).
ERRORS = {code: ResponseSpec(data_container=ApiError, description=text, generate_examples=False) for code, text in (
    (400, "Invalid request (`errors` names the fields)"), (401, "No valid API token"),
    (403, "Not allowed (administrators only, a read-only token, an unconfirmed address)"),
    (404, "No such integration (or not yours)"), (409, "Not possible in the integration's current status"),
    (503, "NATS unreachable; try again shortly"))}


class IntegrationRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A request for events (``POST /integrations``); checked field by field, refusals name the field. Scope
    lists are lists or comma/space separated text. ``basic_auth`` (``user:password``) or ``bearer`` are the
    endpoint's credentials (``lrs`` needs one)."""

    name: str | None = None
    protocol: str | None = None
    delivery: str | None = None
    url: str | None = None
    reason: str | None = None
    basic_auth: str | None = None
    bearer: str | None = None
    batch_size: int | str | None = None  # statements per POST, 1..500 (push deliveries; default 1)
    batch_wait_ms: int | str | None = None  # longest wait to fill a batch, 10..5000 ms (default 200)
    rate_limit: float | str | None = None  # POSTs per second, 0 (no limit) .. RTHUB_MAX_RATE_LIMIT
    custom_headers: dict[str, str] | list[dict[str, str]] | str | None = None  # reserved names refused
    payload_filter: list[str] | str | None = None  # top-level parts to drop, e.g. ["context", "result"]
    sites: list[str] | str | None = None
    orgs: list[str] | str | None = None
    courses: list[str] | str | None = None
    event_types: list[str] | str | None = None
    learner_groups: list[str] | str | None = None  # only these learner groups' members (names from an admin)
    identity: list[str] | str | None = None  # identity fields asked for (user_id, username, email)


class GroupView(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A learner group (administrators only): its site, size and, when one group is read, its members
    (LMS user ids)."""

    name: str
    site: str
    size: int
    description: str = ""
    members: list[str] | UnsetType = UNSET


class GroupCreate(msgspec.Struct, kw_only=True):
    """A new group (or more members for an existing one of the same site): LMS user ids, a list or ``"7,8"``."""

    name: str
    site: str
    users: list[str] | str = []
    description: str = ""


class GroupChange(msgspec.Struct, kw_only=True):
    """Members to add and to remove (LMS user ids); applies to the next event within seconds."""

    add: list[str] | str = []
    remove: list[str] | str = []


class GroupImport(msgspec.Struct, kw_only=True):
    """A CSV of members: header ``user_id`` (optional ``username``, ``email``), or one id a line."""

    csv: str


class GroupDeleted(msgspec.Struct, kw_only=True):
    removed_members: int


class Retired(msgspec.Struct, kw_only=True):
    """``known``: the store had something of this learner (now purged); false: nothing was stored."""

    known: bool


class Retirement(msgspec.Struct, kw_only=True):
    """Open edX user retirement: forget a learner (groups and identity fields) everywhere."""

    site: str
    user_id: str


class Decision(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An administrator's decision: the ``reason`` (required to deny) and, to approve less than asked, the
    granted scope (any scope field sent replaces the request's). Identity fields are granted only when named
    here (``identity``), explicitly; the approval is audited."""

    reason: str | None = None
    sites: list[str] | str | None = None
    orgs: list[str] | str | None = None
    courses: list[str] | str | None = None
    event_types: list[str] | str | None = None
    learner_groups: list[str] | str | None = None
    identity: list[str] | str | None = None


class StatusDetail(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Delivery figures of an approved or suspended integration (``hub.deliver.state.integration_status``); a field the hub
    did not report is left out. Times are epoch seconds."""

    integration: str | UnsetType = UNSET
    kind: str | None | UnsetType = UNSET
    url: str | None | UnsetType = UNSET
    enabled: bool | None | UnsetType = UNSET
    disabled_reason: str | None | UnsetType = UNSET
    disabled_at: float | None | UnsetType = UNSET
    delivered: int | None | UnsetType = UNSET
    attempts: int | UnsetType = UNSET
    failures: int | UnsetType = UNSET
    dead_lettered: int | UnsetType = UNSET
    lag: int | None | UnsetType = UNSET
    pending: int | None | UnsetType = UNSET
    ack_pending: int | None | UnsetType = UNSET
    awaiting_ack: int | None | UnsetType = UNSET
    last_success: float | None | UnsetType = UNSET
    last_error: str | None | UnsetType = UNSET
    last_error_at: float | None | UnsetType = UNSET
    failing_since: float | None | UnsetType = UNSET
    behind_since: float | None | UnsetType = UNSET
    dead_letters: int | None | UnsetType = UNSET
    replay_since: str | None | UnsetType = UNSET
    recent: list[Attempt] | UnsetType = UNSET


class IntegrationView(msgspec.Struct, kw_only=True):
    """An integration as its owner or an administrator sees it: never credentials or secrets. ``warnings``
    (after a request) names course keys the hub has not seen yet."""

    id: str
    name: str
    protocol: str
    delivery: str
    url: str | None
    auth: str
    batch_size: int = 1
    batch_wait_ms: int = 200
    rate_limit: float = 0.0
    custom_headers: dict[str, str] = {}
    payload_filter: list[str] = []
    paused_since: str | None = None
    status: str
    reason: str
    decision_reason: str
    decided_by: str
    requested: Scope
    granted: Scope | None
    consumer: str
    owner: str | None = None
    created: str | None = None
    updated: str | None = None
    warnings: dict[str, str] | None = None
    health: EndpointState | None = None  # in the list: the delivery state at a glance


class RotatedSecret(msgspec.Struct, kw_only=True):
    """A new webhook signing secret, shown once; the previous one is accepted until ``previous_secret_accepted_until``."""

    id: str
    webhook_secret: str
    previous_secret_accepted_until: str


class IntegrationDetail(IntegrationView, kw_only=True, omit_defaults=True):
    """One integration with its delivery figures (``hub.deliver.state.integration_status``: delivered, lag, last error, dead
    letters, ``behind_since`` when it cannot keep up) and, once, the webhook secret made at approval."""

    status_detail: StatusDetail = msgspec.field(default_factory=StatusDetail)
    webhook_secret: str | None = None


class WebhookSecret(msgspec.Struct, kw_only=True):
    """The current webhook signing secret, shown again to its owner (``POST .../secret``; audited)."""

    id: str
    webhook_secret: str


class Health(msgspec.Struct, kw_only=True, omit_defaults=True):
    status: str  # "ok" or "degraded"
    down: list[str] = []  # what is unreachable while degraded ("nats")
    detail: str | None = None


class Me(msgspec.Struct, kw_only=True):
    email: str
    name: str
    admin: bool


class AuditView(msgspec.Struct, kw_only=True):
    at: str
    actor: str
    action: str
    integration: str | None
    detail: str


# ---- running an integration (portal.controllers.ops)
class ResendRequest(msgspec.Struct, kw_only=True):
    """``seq`` (one statement) or ``seqs`` (every statement of one POST: an attempt's ``seqs``, up to 500)."""

    seq: int | None = None
    seqs: list[int] | None = None


class RedriveRequest(msgspec.Struct, kw_only=True):
    """``seqs`` (dead-letter sequences) or ``since`` (ISO time or age such as ``2h``); neither = all."""

    seqs: list[int] | None = None
    since: str | None = None


class ReplayRequest(msgspec.Struct, kw_only=True):
    since: str


class DeadLetterView(msgspec.Struct, kw_only=True):
    seq: int
    statement_id: str
    reason: str
    last_status: int
    response: str
    failed_at: str
