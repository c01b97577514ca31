"""Validation of integration requests and approvals: pure functions, clear messages, no I/O."""

from __future__ import annotations

import email.errors
import email.headerregistry
import email.utils
import ipaddress
import re
import unicodedata
from typing import Any
from urllib.parse import urlsplit

import msgspec

from hub.core.delivery_kinds import KINDS, is_push
from hub.core.grants import SIZE_REFUSAL, expansion, size_refusal
from hub.core.groups import GROUP_NAME, IDENTITY_FIELDS
from hub.core.protocols import NAMES
from hub.deliver.transport import ssrf

PROTOCOLS = NAMES  # the hub's protocol registry
DELIVERIES = tuple(KINDS)  # the hub's delivery kinds (hub.core.delivery_kinds)
DELIVERY_LABELS = {k.name: k.label for k in KINDS.values()}
ORG = re.compile(r"[A-Za-z0-9._\-]{1,100}")
COURSE = re.compile(
    r"(?:course|ccx)-v1:[A-Za-z0-9._\-~]+\+[A-Za-z0-9._\-~]+\+[A-Za-z0-9._\-~@+]+"
    r"|[A-Za-z0-9._\-]+/[A-Za-z0-9._\-]+/[A-Za-z0-9._\-]+"
)
EVENT_TYPE = re.compile(r"[A-Za-z0-9._:/\-]{1,200}")
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}")
_BIDI = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))
MAX_LIST = 50


class Scope(msgspec.Struct, kw_only=True):
    """What a grant covers. ``learner_groups`` restricts it to those groups' members; ``identity`` names the
    identity fields (user_id, username, email) asked for, or approved explicitly by an administrator."""

    sites: list[str] = []
    orgs: list[str] = []
    courses: list[str] = []
    event_types: list[str] = []
    learner_groups: list[str] = []
    identity: list[str] = []

    def empty(self) -> bool:
        return not (self.sites or self.orgs or self.courses)


class IntegrationSpec(msgspec.Struct, kw_only=True):
    """A validated request for access."""

    name: str
    protocol: str
    delivery: str
    scope: Scope
    url: str | None = None
    auth_kind: str = "none"  # none | basic | bearer
    auth_value: str | None = None
    reason: str = ""
    batch_size: int = 1  # statements per POST (1 = one each); > 1 = a JSON array / one Caliper envelope
    batch_wait_ms: int = 200  # longest wait to fill a batch
    rate_limit: float = 0.0  # POSTs per second, 0 = as fast as the endpoint answers
    custom_headers: dict[str, str] = {}
    payload_filter: list[str] = []  # top-level parts dropped from every statement before signing


def split_list(value: Any) -> list[str]:
    """A form field (commas, spaces or new lines between items) or an API list -> stripped unique items."""
    if value is None:
        return []
    items = value if isinstance(value, list) else re.split(r"[\s,]+", str(value))
    out: list[str] = []
    for item in items:
        text = str(item).strip()
        if text and text not in out:
            out.append(text)
    return out


def clean_text(value: Any, field: str, max_len: int, errors: dict[str, str], required: bool = False,
               multiline: bool = False) -> str:
    """Strip, bound and reject control characters and bidi overrides (which make text lie about itself)."""
    text = unicodedata.normalize("NFC", str(value or "")).strip()
    if required and not text:
        errors[field] = "This field is required."
    elif len(text) > max_len:
        errors[field] = f"At most {max_len} characters (got {len(text)})."
    elif any((unicodedata.category(c) == "Cc" and not (multiline and c in "\r\n\t")) or ord(c) in _BIDI
             for c in text):
        errors[field] = "Contains control or text-direction characters."
    return text


def check_url(value: Any, errors: dict[str, str], field: str = "url", allowed: list | tuple = ()) -> str | None:
    text = str(value or "").strip()
    if not text:
        errors[field] = "An endpoint URL is required for this delivery."
        return None
    if len(text) > 2048:
        errors[field] = "URL too long (at most 2048 characters)."
        return None
    try:
        parts = urlsplit(text)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        parts, port_ok = None, False
    if (parts is None or not port_ok or parts.scheme not in ("http", "https") or not parts.hostname
            or any(c.isspace() or unicodedata.category(c) == "Cc" for c in text)):
        errors[field] = "Not a valid http:// or https:// URL."
        return None
    if parts.username or parts.password:
        errors[field] = "Do not put credentials in the URL; use the credential fields."
        return None
    try:
        literal = ipaddress.ip_address(parts.hostname.split("%")[0])
    except ValueError:
        literal = None  # a name: the deliverer checks what it resolves to at every connection
    if literal is not None:
        try:
            ssrf.check_address(literal, list(allowed))
        except ssrf.Refused as exc:  # the same words as portal.services.endpoints.reachable
            errors[field] = f"The deliverer will not send there: {exc}."
            return None
    return text


def _spaced_course(value: Any) -> str | None:
    """A comma-separated entry with a space inside that is not simply several valid keys (``a b`` of two keys is
    fine): the typo behind the old confusing "not a valid course key: <half a key>"."""
    chunks = value if isinstance(value, list) else re.split(r"[,;\n]+", str(value or ""))
    for chunk in chunks:
        text = str(chunk).strip()
        if re.search(r"\s", text) and not all(COURSE.fullmatch(p) for p in text.split()):
            return text
    return None


def check_scope(raw: dict[str, Any], known_sites: set[str], errors: dict[str, str]) -> Scope:
    scope = Scope(sites=split_list(raw.get("sites")), orgs=split_list(raw.get("orgs")),
                  courses=split_list(raw.get("courses")), event_types=split_list(raw.get("event_types")),
                  learner_groups=split_list(raw.get("learner_groups")), identity=split_list(raw.get("identity")))
    errors_before = set(errors)
    bad_groups = [g for g in scope.learner_groups if not GROUP_NAME.fullmatch(g)]
    if bad_groups or len(scope.learner_groups) > MAX_LIST:
        errors["learner_groups"] = (f"Not a group name (letters, digits, _ -): {bad_groups[0][:80]}" if bad_groups
                                    else f"At most {MAX_LIST} entries.")
    bad_fields = [f for f in scope.identity if f not in IDENTITY_FIELDS]
    if bad_fields:
        errors["identity"] = f"Unknown identity field {bad_fields[0][:40]!r}; one of {', '.join(IDENTITY_FIELDS)}."
    spaced = _spaced_course(raw.get("courses"))
    for field, values, pattern, what in (
        ("orgs", scope.orgs, ORG, "organisation code (letters, digits, . _ -)"),
        ("courses", scope.courses, COURSE, "course key such as course-v1:edX+DemoX+Demo_Course"),
        ("event_types", scope.event_types, EVENT_TYPE, "event name such as edx.video.played"),
    ):
        if len(values) > MAX_LIST:
            errors[field] = f"At most {MAX_LIST} entries."
            continue
        bad = [v for v in values if not pattern.fullmatch(v)]
        if bad and not (field == "courses" and spaced):
            errors[field] = f"Not a valid {what}: {bad[0][:80]}"
    if "courses" not in errors_before and spaced:
        errors["courses"] = (f"{spaced[:80]!r} contains a space, and course keys have none. Separate several "
                             "keys with commas; check the key in the course's URL (course-v1:ORG+NUMBER+RUN).")
    unknown = [s for s in scope.sites if s not in known_sites]
    if unknown:
        errors["sites"] = f"Unknown site {unknown[0][:80]!r}; configured sites: {', '.join(sorted(known_sites))}."
    if scope.empty() and not ({"sites", "orgs", "courses"} & errors.keys()):
        errors["scope"] = "Name at least one site, organisation or course."
    return scope


BATCH_MAX = 500  # statements per POST: an LRS takes arrays of this size, a webhook body stays well under 10 MB
BATCH_WAIT_MS = (10, 5000)


def check_batch(raw: dict[str, Any], errors: dict[str, str], defaults: tuple[int, int] = (1, 200)) -> tuple[int, int]:
    """``batch_size`` (1..500) and ``batch_wait_ms`` (10..5000) from a form or JSON body; missing = ``defaults``."""
    out = list(defaults)
    limits = {"batch_size": (1, BATCH_MAX), "batch_wait_ms": BATCH_WAIT_MS}
    for i, (field, (low, high)) in enumerate(limits.items()):
        value = raw.get(field)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        text = str(value).strip()
        if isinstance(value, bool) or not (isinstance(value, int) or (text.isascii() and text.isdigit())) \
                or not low <= int(text) <= high:
            errors[field] = (f"A whole number from {low} (one statement per request) to {high}." if i == 0
                             else f"A whole number of milliseconds from {low} to {high}.")
            continue
        out[i] = int(text)
    return out[0], out[1]


# Top-level parts of a statement (xAPI) or event (Caliper) a consumer may drop; what identifies the statement
# and its meaning (id, actor, verb/action, object, ...) always stays.
PAYLOAD_PARTS = {
    "xapi": ("context", "result", "authority", "attachments", "timestamp", "stored", "version"),
    "caliper": ("extensions", "session", "generated", "target", "edApp", "group", "membership", "referrer",
                "federatedSession"),
}
HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")
MAX_HEADERS = 10


def check_rate_limit(value: Any, errors: dict[str, str], maximum: float, default: float = 0.0) -> float:
    """POSTs per second, 0 (unlimited) up to the administrator's ``maximum`` (``RTHUB_MAX_RATE_LIMIT``)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        rate = float(str(value).strip()) if not isinstance(value, bool) else -1.0
    except ValueError:
        rate = -1.0
    if not (0 <= rate <= maximum) or rate != rate:
        errors["rate_limit"] = f"Requests per second from 0 (no limit) to {maximum:g}."
        return default
    return rate


def check_custom_headers(value: Any, errors: dict[str, str]) -> dict[str, str] | None:
    """Headers added to every request: a mapping, a list of ``{name, value}`` or ``Name: value`` lines (the
    form). Reserved names (the hub's own, HTTP framing) are refused by name. ``None`` when absent."""
    if value is None:
        return None
    pairs: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list):
        for entry in value:
            if isinstance(entry, dict) and set(entry) <= {"name", "value"}:
                pairs.append((entry.get("name"), entry.get("value")))
            else:
                errors["custom_headers"] = "A list of {name, value} pairs."
                return None
    elif isinstance(value, str):
        for line in value.splitlines():
            if line.strip():
                name, sep, text = line.partition(":")
                if not sep:
                    errors["custom_headers"] = f"One header per line, as Name: value (line {line[:40]!r})."
                    return None
                pairs.append((name.strip(), text.strip()))
    else:
        errors["custom_headers"] = "A list of {name, value} pairs."
        return None
    from hub.deliver.transport.request import RESERVED_HEADERS

    out: dict[str, str] = {}
    for name, text in pairs:
        if not isinstance(name, str) or not HEADER_NAME.fullmatch(name):
            errors["custom_headers"] = f"Header name {str(name)[:64]!r} is not a valid HTTP header name."
            return None
        if name.lower() in RESERVED_HEADERS:
            errors["custom_headers"] = f"Header {name} is reserved (set by the hub): choose another name."
            return None
        if not isinstance(text, str) or len(text) > 1000 or any(ord(c) < 32 or ord(c) == 127 for c in text):
            errors["custom_headers"] = f"The value of {name} must be text of at most 1000 characters on one line."
            return None
        if name.lower() in {k.lower() for k in out}:
            errors["custom_headers"] = f"Header {name} is given twice."
            return None
        out[name] = text
    if len(out) > MAX_HEADERS:
        errors["custom_headers"] = f"At most {MAX_HEADERS} headers."
        return None
    return out


def check_payload_filter(value: Any, protocol: str, errors: dict[str, str]) -> list[str] | None:
    """The top-level parts to drop (:data:`PAYLOAD_PARTS` of the protocol); ``None`` when absent."""
    if value is None:
        return None
    parts = split_list(value)
    allowed = PAYLOAD_PARTS.get(protocol, ())
    wrong = [p for p in parts if p not in allowed]
    if wrong:
        errors["payload_filter"] = (f"{', '.join(w[:40] for w in wrong[:5])}: not a part you can drop; "
                                    f"choose from {', '.join(allowed)}.")
        return None
    return sorted(set(parts), key=allowed.index)


def validate_request(raw: dict[str, Any], known_sites: set[str], max_text: int = 2000, allowed: list | tuple = (),
                     max_rate: float = 100.0) -> tuple[IntegrationSpec | None, dict[str, str]]:
    """Form or JSON body -> (spec, {}) or (None, {field: message})."""
    errors: dict[str, str] = {}
    name = clean_text(raw.get("name"), "name", 100, errors, required=True)
    reason = clean_text(raw.get("reason"), "reason", max_text, errors, multiline=True)
    protocol = str(raw.get("protocol") or "")
    if protocol not in PROTOCOLS:
        errors["protocol"] = "Choose xapi, caliper or cloudevents."
    delivery = str(raw.get("delivery") or "")
    if delivery not in DELIVERIES:
        errors["delivery"] = f"Choose {', '.join(DELIVERIES[:-1])} or {DELIVERIES[-1]}."
    elif protocol in PROTOCOLS and protocol not in KINDS[delivery].protocols:
        kind = KINDS[delivery]
        errors["delivery"] = f"{kind.label} takes {' or '.join(kind.protocols)} only: choose protocol {kind.protocols[0]}."
    push = is_push(delivery)
    url = check_url(raw.get("url"), errors, allowed=allowed) if push else None
    auth_kind, auth_value = "none", None
    basic = clean_text(raw.get("basic_auth"), "basic_auth", 500, errors)
    bearer = clean_text(raw.get("bearer"), "bearer", 2000, errors)
    credential = KINDS[delivery].credential if delivery in KINDS else None
    if credential == "basic_auth":  # basic credentials, or a bearer token instead (an LRS takes either)
        if basic and bearer:
            errors["basic_auth"] = "Give either basic credentials or a bearer token, not both."
        elif basic:
            if ":" not in basic or basic.startswith(":"):
                errors["basic_auth"] = "Basic credentials look like USER:PASSWORD."
            auth_kind, auth_value = "basic", basic
        elif bearer:
            auth_kind, auth_value = "bearer", bearer
        else:
            errors["basic_auth"] = "An LRS needs basic credentials (USER:PASSWORD) or a bearer token."
    elif credential == "bearer":
        if not bearer:
            errors["bearer"] = "A Caliper endpoint needs a bearer token."
        auth_kind, auth_value = "bearer", bearer
    batch_size, batch_wait_ms = check_batch(raw, errors) if push else (1, 200)
    rate = check_rate_limit(raw.get("rate_limit"), errors, max_rate) if push else 0.0
    headers = check_custom_headers(raw.get("custom_headers") or None, errors) if push else None
    parts = check_payload_filter(raw.get("payload_filter") or None, protocol, errors) if push else None
    scope = check_scope(raw, known_sites, errors)
    if delivery in DELIVERIES and "scope" not in errors:
        check_scope_size(scope, delivery, errors)
    if errors:
        return None, errors
    return IntegrationSpec(name=name, protocol=protocol, delivery=delivery, scope=scope, url=url,
                           auth_kind=auth_kind, auth_value=auth_value, reason=reason, batch_size=batch_size,
                           batch_wait_ms=batch_wait_ms, rate_limit=rate, custom_headers=headers or {},
                           payload_filter=parts or []), {}


def check_scope_size(scope: Scope, delivery: str, errors: dict[str, str]) -> int:
    """Refuse a scope whose expansion (sites x orgs x courses x event types x groups) exceeds the delivery
    kind's limit (:data:`hub.core.grants.MAX_FILTERS_PUSH` / ``MAX_FILTERS_DIRECT``); returns the count."""
    _, count = expansion(scope.sites, scope.orgs, scope.courses, scope.event_types,
                         getattr(scope, "learner_groups", ()))
    refusal = size_refusal(count, delivery)
    if refusal:
        errors["scope"] = refusal
    return count


def size_refused(errors: dict[str, str]) -> str | None:
    """The scope-size refusal among ``errors`` (the audit log records it), if that is one of them."""
    text = errors.get("scope", "")
    return text if text.startswith(SIZE_REFUSAL) else None


def check_narrowing(requested: Scope, granted: Scope) -> dict[str, str]:
    """An approval may only narrow: every granted value must have been requested (unless "any" was asked)."""
    errors: dict[str, str] = {}
    for field in ("sites", "orgs", "courses", "event_types", "learner_groups", "identity"):
        asked, given = getattr(requested, field), getattr(granted, field)
        if field == "identity":  # nothing personal unless asked for: never "any" when the request named none
            extra = [v for v in given if v not in asked]
            if extra:
                errors[field] = f"{extra[0][:80]!r} was not requested; approval can only narrow the scope."
            continue
        if asked and not given:
            errors[field] = f"The request limited {field}; approval cannot widen it to any."
        extra = [v for v in given if asked and v not in asked]
        if extra:
            errors[field] = f"{extra[0][:80]!r} was not requested; approval can only narrow the scope."
    if granted.empty():
        errors["scope"] = "A grant must name at least one site, organisation or course."
    return errors


def email_problem(text: str) -> str | None:
    """Why ``text`` is not one plain address ``local@domain`` (``None``: it is). Parsed with the standard
    library's address parser, not a pattern: a display name (``z9<dave@example.org>``) or a list
    (``a,b@example.org``) would let one account name several mailboxes and slip past per-address limits."""
    if not text or len(text) > 254 or any(c.isspace() or unicodedata.category(c) == "Cc" for c in text):
        return "Not a valid e-mail address."
    if any(c in text for c in '<>,;:"()[]\\'):
        return "Give one plain address such as name@example.org: no display name, no list."
    try:
        pairs = email.utils.getaddresses([text])
        address = email.headerregistry.Address(addr_spec=text)
    except (ValueError, IndexError, email.errors.HeaderParseError):
        return "Not a valid e-mail address."
    if len(pairs) != 1 or pairs[0] != ("", text) or address.addr_spec != text:
        return "Give one plain address such as name@example.org: no display name, no list."
    local, _, domain = text.rpartition("@")
    if not local or len(local) > 64 or "." not in domain.strip(".") or domain.startswith(".") \
            or domain.endswith(".") or not EMAIL.fullmatch(text):
        return "Not a valid e-mail address."
    return None


def validate_signup(raw: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    errors: dict[str, str] = {}
    email = clean_text(raw.get("email"), "email", 254, errors, required=True).lower()
    if "email" not in errors and (problem := email_problem(email)):
        errors["email"] = problem
    name = clean_text(raw.get("name"), "name", 200, errors, required=True)
    password = str(raw.get("password") or "")
    if problem := password_problem(password):
        errors["password"] = problem
    return {"email": email, "name": name, "password": password}, errors


def password_problem(password: str) -> str | None:
    """Why a new password is refused (sign-up and reset alike), or ``None``."""
    if len(password) < 10:
        return "Use at least 10 characters."
    if len(password) > 1000:
        return "At most 1000 characters."
    return None
