"""The portal web app: Jinja2 pages for people (session cookie + CSRF), a JSON API for programs (bearer API
tokens, OpenAPI at ``/schema``). Both call :class:`portal.service.Portal`; neither holds business rules."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
from jinja2 import Environment, FileSystemLoader
from litestar import Litestar, Request, Response, Router, get, post
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import Cookie, State
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
)
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from markupsafe import Markup

from portal import accounts, courses, db, endpoint, flash, security
from portal.api_types import AuditView, IntegrationDetail, IntegrationView, Me, RotatedSecret
from portal.deliveries import EndpointState, endpoint_state, fmt
from portal.headers import SECURITY_HEADERS, SecurityHeaders
from portal.service import (
    NotFound,
    Portal,
    PortalError,
    grant_of,
    granted_scope,
    now,
    public_view,
    requested_scope,
)
from portal.settings import PortalSettings
from portal.tables import Account, Integration
from portal.validation import (
    DELIVERY_LABELS,
    Scope,
    check_scope,
    clean_text,
    password_problem,
    split_list,
    validate_request,
    validate_signup,
)

log = logging.getLogger("rthub.portal.web")
HERE = Path(__file__).parent
SESSION_COOKIE = "rthub_session"


def portal_of(request: Request) -> Portal:
    return request.app.state.portal


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def current_user(request: Request) -> Account | None:
    if "account" not in request.state:
        token = request.cookies.get(SESSION_COOKIE)
        request.state.account = await portal_of(request).session_account(token)
        if request.state.account is not None:
            recent: dict = request.app.state.recent_sessions
            recent[security.sha256(token)] = request.state.account
            while len(recent) > 1000:
                recent.pop(next(iter(recent)))
    return request.state.account


def known_session(request: Request) -> Account | None:
    """The account of a session seen recently: only to draw the navigation of an error page that is
    answered before any handler ran (a CSRF refusal); never used to authorise anything."""
    token = request.cookies.get(SESSION_COOKIE)
    return request.app.state.recent_sessions.get(security.sha256(token)) if token and len(token) <= 200 else None


class LoginNeeded(NotAuthorizedException):
    """No valid session: go to the log-in page, then back to ``back`` (the typed form is kept)."""

    def __init__(self, back: str, box: str):
        super().__init__("Log in first.")
        self.back, self.box = back, box


def safe_back(path: Any) -> str:
    """A same-site path to return to after log-in (never another host, never a protocol-relative URL)."""
    text = str(path or "")
    # Browsers drop tabs and new lines inside URLs ("/\t/evil" becomes "//evil"): refuse any control or space.
    if (not text.startswith("/") or text.startswith("//") or "\\" in text or len(text) > 300
            or any(ord(c) < 33 or ord(c) == 127 for c in text)):
        return "/"
    return text


def form_page_of(path: str, raw: dict[str, Any]) -> str:
    """The page whose form POSTs to ``path`` (no Referer: the portal sends ``Referrer-Policy: no-referrer``)."""
    parts = [p for p in path.split("/") if p]
    if parts == ["integrations"]:
        return "/integrations/new"
    if parts[:1] == ["tokens"]:
        return "/tokens"
    if len(parts) >= 3 and parts[0] == "integrations":
        if parts[2] == "ops" and raw.get("back") == "deliveries":
            return f"/integrations/{parts[1]}/deliveries"
        return f"/integrations/{parts[1]}"
    if len(parts) >= 4 and parts[:2] == ["admin", "integrations"]:
        return f"/admin/integrations/{parts[2]}"
    return "/"


async def login_needed(request: Request) -> LoginNeeded:
    """Remember where the person was (and, for a form, what they typed) so log-in brings them back."""
    box = flash_box(request)
    # Only a browser that had a session (it expired) gets anything stored: anonymous hits write nothing.
    had_session = bool(request.cookies.get(SESSION_COOKIE))
    if request.method == "GET":
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    else:
        try:
            raw = await form_of(request)
        except Exception:  # noqa: BLE001 - not a form body: nothing to keep
            raw = {}
        back = form_page_of(request.url.path, raw)
        if had_session:
            typed = json.dumps(flash.stashable(raw))
            if typed != "{}" and len(typed) <= flash.MAX_STASH:
                await flash.put(box, "", "form", typed, path=back.split("?")[0])
    if had_session:
        await flash.put(box, "", "info", "Your session has expired: log in again to continue where you were.")
    return LoginNeeded(safe_back(back), box)


async def require_user(request: Request) -> Account:
    user = await current_user(request)
    if user is None:
        raise await login_needed(request)
    return user


async def require_admin(request: Request) -> Account:
    user = await require_user(request)
    if not user.is_admin:
        raise PermissionDeniedException("Administrators only.")
    return user


async def form_of(request: Request) -> dict[str, Any]:
    """Form fields; repeated fields (checkboxes) become lists."""
    form = await request.form()
    out: dict[str, Any] = {}
    for key in form.keys():
        values = form.getall(key)
        out[key] = values if len(values) > 1 or key == "sites" else values[0]
    return out


def page(request: Request, name: str, status: int = 200, **context: Any) -> Template:
    settings: PortalSettings = request.app.state.settings
    context.setdefault("user", request.state.get("account"))
    context.setdefault("flash", request.state.get("flash") or flash.EMPTY)
    context["known_sites"] = sorted(settings.sites)
    context["delivery_labels"] = DELIVERY_LABELS
    return Template(template_name=name, context=context, status_code=status,
                    headers={"Cache-Control": "no-store"})


def flash_box(request: Request) -> str:
    box = request.cookies.get(flash.COOKIE) or ""
    return box if 20 <= len(box) <= 100 else (request.state.get("new_box") or flash.new_box())


def flash_session(request: Request) -> str:
    """The session the flash entries belong to: the cookie only while it is a live session."""
    return request.cookies.get(SESSION_COOKIE, "") if request.state.get("account") else ""


def with_box(response: Response, request: Request, box: str) -> Response:
    settings: PortalSettings = request.app.state.settings
    response.cookies.append(Cookie(key=flash.COOKIE, value=box, httponly=True, samesite="lax",
                                   secure=settings.cookie_secure, max_age=int(flash.KEEP.total_seconds()), path="/"))
    return response


async def go(request: Request, path: str, msg: str = "", kind: str = "info", session: str | None = None,
             **shown: str) -> Redirect:
    """Redirect after a POST (reload never repeats it); ``msg`` and ``shown`` (a ``secret`` or ``token``)
    wait on the server for the next page."""
    box = flash_box(request)
    session = flash_session(request) if session is None else session
    if msg:
        await flash.put(box, session, kind, msg)
    for what, text in shown.items():
        await flash.put(box, session, what, flash.seal(getattr(portal_of(request), "box", None), text))
    return with_box(Redirect(path, status_code=303), request, box)


async def load_flash(request: Request) -> None:
    """Before each page view: what earlier POSTs left for it (read once)."""
    if (request.method != "GET" or request.url.path.startswith(("/api/", "/static", "/schema", "/health"))
            or request.url.path.endswith(".json")):  # a page script's poll must not eat the next page's messages
        return
    box = request.cookies.get(flash.COOKIE)
    if box:
        await current_user(request)
        shown = await flash.take(box, flash_session(request), request.url.path)
        for what in ("secret", "token"):
            shown[what] = flash.unseal(getattr(portal_of(request), "box", None), shown[what])
        request.state.flash = shown


async def once_claimed(request: Request, raw: dict[str, Any], fallback: str) -> Redirect | None:
    """A double-clicked (or re-sent) form: go where the first submission went instead of acting again."""
    first = await flash.claim(raw.get("_once"))
    if first is None:
        return None
    return await go(request, first or fallback, "That form was already sent; it was acted on once.")


# ---------------------------------------------------------------- pages: accounts
@get("/")
async def home(request: Request) -> Redirect:
    user = await current_user(request)
    if user is None:
        return Redirect("/login", status_code=303)
    return Redirect("/admin" if user.is_admin else "/integrations", status_code=303)


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/signup")
async def signup_form(request: Request) -> Template:
    return page(request, "signup.html", form={}, errors={})


@post("/signup")
async def signup(request: Request) -> Template:
    raw = await form_of(request)
    values, errors = validate_signup(raw)
    if not errors:
        try:
            await accounts.signup(portal_of(request), values["email"], values["name"], values["password"],
                                  client_of(request))
        except PortalError as exc:
            if exc.status != 429:
                raise
            return page(request, "signup.html", status=429, form={"email": values["email"], "name": values["name"]},
                        errors={"email": exc.message})
    if errors:
        return page(request, "signup.html", status=400, form={k: v for k, v in values.items() if k != "password"},
                    errors=errors)
    # The same answer whether the address was new or already registered (its owner gets a mail either way).
    return page(request, "mail_sent.html", message=f"We sent a mail to {values['email']}: follow its link to "
                "finish signing up.")


def _problem(request: Request, status: int, message: str) -> Template:
    """The error page for a link that cannot be used (expired, used, forged)."""
    response = page(request, "error.html", status=status, message=message)
    response.context["status"] = status
    return response


@get("/verify")
async def verify_form(request: Request, token: FromQuery[str] = "") -> Template:
    try:
        await accounts.check_link(token, accounts.VERIFY)
    except PortalError as exc:
        return _problem(request, exc.status, exc.message)
    return page(request, "verify.html", token=token, error="")


@post("/verify")
async def verify(request: Request) -> Template | Redirect:
    raw = await form_of(request)
    token = str(raw.get("token", ""))[:200]
    try:
        session = await accounts.confirm(portal_of(request), token, str(raw.get("password", "")), client_of(request))
    except PortalError as exc:
        if exc.status == 400:
            return _problem(request, 400, exc.message)
        return page(request, "verify.html", status=exc.status, token=token, error=exc.message)
    welcome = await go(request, "/", "E-mail address confirmed: welcome.", session=session)
    return _with_session(request, welcome, session)


@get("/forgot")
async def forgot_form(request: Request) -> Template:
    return page(request, "forgot.html", error="")


@post("/forgot")
async def forgot(request: Request) -> Template:
    email = str((await form_of(request)).get("email", ""))[:254]
    try:
        await accounts.forgot(portal_of(request), email, client_of(request))
    except PortalError as exc:
        return page(request, "forgot.html", status=exc.status, error=exc.message)
    return page(request, "mail_sent.html", message=f"If {email} has an account, we sent it a link to choose a new "
                "password.")


@get("/reset")
async def reset_form(request: Request, token: FromQuery[str] = "") -> Template:
    try:
        await accounts.check_link(token, accounts.RESET)
    except PortalError as exc:
        return _problem(request, exc.status, exc.message)
    return page(request, "reset.html", token=token, error="")


@post("/reset")
async def reset(request: Request) -> Template | Redirect:
    raw = await form_of(request)
    token = str(raw.get("token", ""))[:200]
    if problem := password_problem(str(raw.get("password") or "")):
        return page(request, "reset.html", status=400, token=token, error=problem)
    try:
        await accounts.reset(portal_of(request), token, str(raw.get("password")))
    except PortalError as exc:
        return _problem(request, exc.status, exc.message)
    return await go(request, "/login", "Password changed: log in with the new one.")


@get("/login")
async def login_form(request: Request) -> Template:
    back = request.query_params.get("next")
    return page(request, "login.html", form={}, error="", next=safe_back(back) if back else "")


async def _login_response(request: Request, email: str, password: str, back: str = "/") -> Template | Redirect:
    try:
        token = await portal_of(request).login(email, password, client_of(request))
    except PortalError as exc:
        return page(request, "login.html", status=exc.status, form={"email": email[:254]}, error=exc.message,
                    next=back if back != "/" else "")
    box = flash_box(request)
    await flash.carry(box, "", token)
    return _with_session(request, with_box(Redirect(safe_back(back), status_code=303), request, box), token)


def _with_session(request: Request, response: Redirect, token: str) -> Redirect:
    settings: PortalSettings = request.app.state.settings
    response.cookies.append(Cookie(key=SESSION_COOKIE, value=token, httponly=True, samesite="lax",
                                   secure=settings.cookie_secure or request.url.scheme == "https",
                                   max_age=int(settings.session_hours * 3600), path="/"))
    return response


@post("/login")
async def login(request: Request) -> Template | Redirect:
    raw = await form_of(request)
    return await _login_response(request, str(raw.get("email", "")), str(raw.get("password", "")),
                                 safe_back(raw.get("next") or "/"))


@post("/logout")
async def logout(request: Request) -> Redirect:
    await portal_of(request).logout(request.cookies.get(SESSION_COOKIE))
    response = await go(request, "/login", "Logged out.", session="")
    response.cookies.append(Cookie(key=SESSION_COOKIE, value="", max_age=0, path="/"))
    return response


# ---------------------------------------------------------------- pages: consumer
@get("/integrations")
async def my_integrations(request: Request) -> Template:
    user = await require_user(request)
    rows = await portal_of(request).list_for(user)
    return page(request, "integrations.html", rows=rows)


@get("/integrations/new")
async def new_integration_form(request: Request) -> Template:
    await require_user(request)
    kept = (request.state.get("flash") or flash.EMPTY)["form"]
    return page(request, "integration_new.html", form=kept or {"protocol": "xapi", "delivery": "webhook"}, errors={},
                known_courses=courses.for_sites(await courses.known_courses(portal_of(request)), []))


@post("/integrations")
async def create_integration(request: Request) -> Template | Redirect:
    user = await require_user(request)
    settings: PortalSettings = request.app.state.settings
    raw = await form_of(request)
    spec, errors = validate_request(raw, set(settings.sites), settings.max_text, settings.allowed())
    if spec and spec.url:
        await endpoint.check_endpoint_url(spec.url, settings, errors)
    known = await courses.known_courses(portal_of(request))
    unknown = courses.unknown_courses(known, spec.scope.sites if spec else [], spec.scope.courses if spec else [])
    if errors:
        # Echo what was typed (escaped by Jinja) so it can be fixed, bounded, and never the credentials.
        shown = {k: (v[:2048] if isinstance(v, str) else [x[:200] for x in v[:50]])
                 for k, v in raw.items() if k not in ("basic_auth", "bearer", "_csrf_token", "_once")}
        return page(request, "integration_new.html", status=400, form=shown, errors=errors,
                    known_courses=courses.for_sites(known, split_list(raw.get("sites"))))
    if again := await once_claimed(request, raw, "/integrations"):
        return again
    row = await portal_of(request).create_integration(user, spec)
    await flash.done(raw.get("_once"), f"/integrations/{row.key}")
    if unknown:
        await flash.put(flash_box(request), flash_session(request), "warning", unknown_warning(unknown))
    return await go(request, f"/integrations/{row.key}", "Request sent: an administrator will review it.")


def unknown_warning(unknown: list[str]) -> str:
    return (f"No events were seen yet for {', '.join(unknown[:5])}{' and more' if len(unknown) > 5 else ''} on "
            "the chosen sites: check the course key (a course without activity yet is fine).")


@get("/integrations/{key:str}")
async def integration_page(request: Request, key: FromPath[str]) -> Template:
    user = await require_user(request)
    portal = portal_of(request)
    row = await portal.get_owned(key, user)
    secret = await portal.take_pending_secret(row) or (request.state.get("flash") or flash.EMPTY)["secret"]
    return await _detail(request, row, secret=secret)


async def _detail(request: Request, row, secret: str | None = None, admin: bool = False, status_code: int = 200,
                  **extra) -> Template:
    portal = portal_of(request)
    state = await state_of(portal, row)
    return page(request, "admin_integration.html" if admin else "integration.html", status=status_code, row=row,
                requested=requested_scope(row), granted=granted_scope(row), state=state, secret=secret,
                secrets=state.secrets, refresh_url=f"/integrations/{row.key}/state.json",
                example=portal.example(row) if row.delivery == "direct" and row.status == "approved" else "",
                direct=await direct_help(portal, row) if row.delivery == "direct" and row.status == "approved" else None,
                audit=await portal.audit_log(50, row.key), **extra)


async def direct_help(portal: Portal, row) -> dict[str, Any]:
    """What a direct subscriber needs besides the Python example: the CLI lines, a sample statement, subjects
    and when the newest downloaded credential expires."""
    from hub.deliver.ops import test_statement
    from hub.grants import consumer_name

    grant = grant_of(row, "")
    _, sample = test_statement(row.protocol, row.key)
    issued = [e for e in await portal.audit_log(200, row.key) if e.action == "creds.issue"]
    last = issued[0].at if issued else None
    try:
        cli = portal.auth().example_nats_cli(grant, consumer_name(row.key), servers=portal.settings.nats_url_for_consumers(),
                                             creds_file=f"{row.key}.creds")
    except (PortalError, AttributeError):
        cli = ""
    return {"cli": cli, "sample": json.dumps(json.loads(sample), indent=2), "subjects": grant.filter_subjects(),
            "days": portal.settings.creds_days, "last_issued": last,
            "last_expires": last + dt.timedelta(days=portal.settings.creds_days) if last else None,
            "new_expires": now() + dt.timedelta(days=portal.settings.creds_days)}


async def state_of(portal: Portal, row) -> EndpointState:
    """The endpoint at a glance, with the signing-secret overlap of a webhook."""
    stats = await portal.status(row)
    state = endpoint_state(row.status, row.delivery, row.decision_reason, row.updated, stats)
    state.secrets = await _safe_count(portal, row)
    if state.secrets > 1 and row.old_secret_until:
        state.old_secret_until = row.old_secret_until.timestamp()
    return state


async def _safe_count(portal: Portal, row) -> int:
    try:
        return await portal.secret_count(row)
    except PortalError:
        return 0


@post("/integrations/{key:str}/rotate")
async def rotate(request: Request, key: FromPath[str]) -> Redirect:
    user = await require_user(request)
    portal = portal_of(request)
    row = await portal.get_owned(key, user)
    raw = await form_of(request)
    if again := await once_claimed(request, raw, f"/integrations/{key}"):
        return again
    secret = await portal.rotate_secret(user, row)
    until = await endpoint.start_overlap(portal, row)
    await flash.done(raw.get("_once"), f"/integrations/{key}")
    return await go(request, f"/integrations/{key}", "New signing secret made; the previous one is still accepted "
                    f"until {fmt(until.timestamp())} or until you retire it.", secret=secret)


@post("/integrations/{key:str}/retire")
async def retire(request: Request, key: FromPath[str]) -> Redirect:
    user = await require_user(request)
    portal = portal_of(request)
    row = await portal.get_owned(key, user)
    await portal.retire_old_secret(user, row)
    await endpoint.update(row, old_secret_until=None)
    return await go(request, f"/integrations/{key}", "The previous signing secret is no longer accepted.")


@post("/integrations/{key:str}/creds")
async def download_creds(request: Request, key: FromPath[str]) -> Response:
    user = await require_user(request)
    portal = portal_of(request)
    row = await portal.get_owned(key, user)
    creds = await portal.issue_creds(user, row)
    return Response(creds, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{row.key}.creds"',
                             "Cache-Control": "no-store"})


@post("/integrations/{key:str}/cancel")
async def cancel(request: Request, key: FromPath[str]) -> Redirect:
    user = await require_user(request)
    portal = portal_of(request)
    row = await portal.get_owned(key, user)
    await portal.revoke(user, key, "cancelled by its owner", row=row)
    return await go(request, f"/integrations/{key}", "Integration cancelled.")


@get("/tokens")
async def tokens_page(request: Request) -> Template:
    user = await require_user(request)
    return page(request, "tokens.html", tokens=await portal_of(request).list_tokens(user),
                new_token=(request.state.get("flash") or flash.EMPTY)["token"], errors={})


@post("/tokens")
async def create_token(request: Request) -> Template | Redirect:
    user = await require_user(request)
    portal = portal_of(request)
    errors: dict[str, str] = {}
    raw = await form_of(request)
    name = clean_text(raw.get("name"), "name", 100, errors, required=True)
    days = _token_days(raw.get("days"), errors)
    if errors:
        return page(request, "tokens.html", status=400, tokens=await portal.list_tokens(user), new_token=None,
                    errors=errors)
    if again := await once_claimed(request, raw, "/tokens"):
        return again
    token = await portal.create_token(user, name, days, read_only=bool(raw.get("read_only")))
    await flash.done(raw.get("_once"), "/tokens")
    return await go(request, "/tokens", f"Token {name!r} created.", token=token)


def _token_days(value: Any, errors: dict[str, str]) -> float | None:
    text = str(value or "").strip()
    if not text:
        return None
    try:
        days = float(text)
    except ValueError:
        days = 0
    if not 0 < days <= 3650:
        errors["days"] = "Expiry: a number of days from 1 to 3650 (or empty for never)."
        return None
    return days


@post("/tokens/{token_id:int}/revoke")
async def revoke_token(request: Request, token_id: FromPath[int]) -> Redirect:
    user = await require_user(request)
    await portal_of(request).revoke_token(user, token_id)
    return await go(request, "/tokens", "Token revoked.")


# ---------------------------------------------------------------- pages: admin
@get("/admin")
async def admin_home(request: Request) -> Template:
    await require_admin(request)
    portal = portal_of(request)
    shown = request.query_params.get("status") or None
    shown = shown if shown in _STATUSES else None
    changes = await Integration.objects().where((Integration.scope_change == True) & (Integration.status == "approved"))  # noqa: E712
    return page(request, "admin.html", pending=[*await portal.list_all("pending"), *changes],
                rows=await portal.list_all(shown), owners=await portal.owner_emails(), shown=shown)


@get("/admin/integrations/{key:str}")
async def admin_integration(request: Request, key: FromPath[str]) -> Template:
    await require_admin(request)
    row = await portal_of(request).get(key)
    return await _detail(request, row, admin=True, errors={}, owner=(await portal_of(request).owner_emails()).get(row.owner))


@post("/admin/integrations/{key:str}/{action:str}")
async def admin_action(request: Request, key: FromPath[str], action: FromPath[str]) -> Template | Redirect:
    admin = await require_admin(request)
    portal = portal_of(request)
    settings: PortalSettings = request.app.state.settings
    raw = await form_of(request)
    errors: dict[str, str] = {}
    reason = clean_text(raw.get("reason"), "reason", settings.max_text, errors, multiline=True)
    try:
        if errors:
            raise PortalError(errors["reason"], 400, errors)
        if action == "approve":
            # What the form shows is what is granted: typing a narrower scope narrows it (no extra switch).
            narrowed = None
            if any(k in raw for k in ("sites", "orgs", "courses", "event_types")):
                narrowed = check_scope(raw, set(settings.sites), errors)
                if errors:
                    raise PortalError("Check the approved scope.", 400, errors)
            if (row := await portal.get(key)).scope_change and row.status == "approved":
                await endpoint.approve_scope_change(portal, admin, row, narrowed)
            else:
                await portal.approve(admin, key, narrowed)
        elif action == "deny":
            if (row := await portal.get(key)).scope_change and row.status == "approved":
                await endpoint.deny_scope_change(portal, admin, row, reason)
            else:
                await portal.deny(admin, key, reason)
        elif action == "suspend":
            await portal.suspend(admin, key, reason)
        elif action == "resume":
            await portal.resume(admin, key)
        elif action == "revoke":
            await portal.revoke(admin, key, reason)
        else:
            raise NotFound("action")
    except PortalError as exc:
        if exc.status == 404:
            raise
        row = await portal.get(key)
        # Field errors are listed once (summary + field); a refusal without a field is the one message.
        return await _detail(request, row, admin=True, errors=exc.errors, error="" if exc.errors else exc.message,
                             owner=(await portal.owner_emails()).get(row.owner), status_code=exc.status,
                             form=flash.stashable(raw))
    return await go(request, f"/admin/integrations/{key}", _DONE.get(action, f"Done: {action}."))


@get("/admin/audit")
async def audit_page(request: Request) -> Template:
    await require_admin(request)
    return page(request, "audit.html", entries=await portal_of(request).audit_log(500))


_STATUSES = ("pending", "approved", "denied", "suspended", "revoked")
_DONE = {"approve": "Approved: the grant is active.", "deny": "Request denied; the requester sees your reason.",
         "suspend": "Suspended: delivery and credentials are stopped.", "resume": "Resumed: delivery restarts.",
         "revoke": "Revoked: the grant, its consumers and credentials are removed."}


# ---------------------------------------------------------------- JSON API (bearer tokens, no cookies)
async def api_user(request: Request) -> Account:
    """The token's account; a read-only token is refused on every method that can change state."""
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    got = await portal_of(request).token_access(token)
    if got is None:
        raise NotAuthorizedException("Send a valid API token: Authorization: Bearer rth_... (it may have expired).")
    user, row = got
    if row.read_only and request.method not in ("GET", "HEAD", "OPTIONS"):
        raise PermissionDeniedException("This API token is read-only.")
    return user


async def api_admin(request: Request) -> Account:
    user = await api_user(request)
    if not user.is_admin:
        raise PermissionDeniedException("Administrators only.")
    return user


@get("/me")
async def api_me(request: Request) -> Me:
    user = await api_user(request)
    return Me(email=user.email, name=user.name, admin=user.is_admin)


@get("/integrations")
async def api_list(request: Request) -> list[IntegrationView]:
    user = await api_user(request)
    return [msgspec.convert(public_view(r), IntegrationView) for r in await portal_of(request).list_for(user)]


@post("/integrations", status_code=201)
async def api_create(request: Request, data: JSONBody[dict[str, Any]]) -> IntegrationView:
    user = await api_user(request)
    settings: PortalSettings = request.app.state.settings
    spec, errors = validate_request(data, set(settings.sites), settings.max_text, settings.allowed())
    if spec and spec.url:
        await endpoint.check_endpoint_url(spec.url, settings, errors)
    if errors:
        raise PortalError("Invalid integration request.", 400, errors)
    view = public_view(await portal_of(request).create_integration(user, spec))
    unknown = courses.unknown_courses(await courses.known_courses(portal_of(request)), spec.scope.sites,
                                      spec.scope.courses)
    if unknown:
        view["warnings"] = {"courses": unknown_warning(unknown)}
    return msgspec.convert(view, IntegrationView)


@get("/integrations/{key:str}")
async def api_get(request: Request, key: FromPath[str]) -> IntegrationDetail:
    user = await api_user(request)
    portal = portal_of(request)
    row = await portal.get_owned(key, user)
    view = public_view(row)
    view["status_detail"] = await portal.status(row)
    secret = await portal.take_pending_secret(row)
    if secret:
        view["webhook_secret"] = secret
    return msgspec.convert(view, IntegrationDetail)


@post("/integrations/{key:str}/rotate-secret", status_code=200)
async def api_rotate(request: Request, key: FromPath[str]) -> RotatedSecret:
    user = await api_user(request)
    portal = portal_of(request)
    row = await portal.get_owned(key, user)
    secret = await portal.rotate_secret(user, row)
    until = await endpoint.start_overlap(portal, row)
    return RotatedSecret(id=row.key, webhook_secret=secret, previous_secret_accepted_until=until.isoformat())


@post("/integrations/{key:str}/creds", status_code=200, media_type="text/plain",
      description="A new `.creds` file (text) for a direct subscription, shown once.")
async def api_creds(request: Request, key: FromPath[str]) -> Response[str]:
    user = await api_user(request)
    portal = portal_of(request)
    row = await portal.get_owned(key, user)
    return Response(await portal.issue_creds(user, row), media_type="text/plain",
                    headers={"Cache-Control": "no-store"})


@post("/integrations/{key:str}/cancel", status_code=200)
async def api_cancel(request: Request, key: FromPath[str]) -> IntegrationView:
    user = await api_user(request)
    portal = portal_of(request)
    row = await portal.get_owned(key, user)
    return msgspec.convert(public_view(await portal.revoke(user, key, "cancelled by its owner", row=row)),
                           IntegrationView)


@get("/admin/integrations")
async def api_admin_list(request: Request, status: FromQuery[str | None] = None) -> list[IntegrationView]:
    await api_admin(request)
    portal = portal_of(request)
    owners = await portal.owner_emails()
    return [msgspec.convert(public_view(r, owners.get(r.owner)), IntegrationView) for r in await portal.list_all(status)]


@post("/admin/integrations/{key:str}/{action:str}", status_code=200)
async def api_admin_action(request: Request, key: FromPath[str], action: FromPath[str], data: JSONBody[dict[str, Any] | None] = None
                           ) -> IntegrationView:
    admin = await api_admin(request)
    portal = portal_of(request)
    settings: PortalSettings = request.app.state.settings
    data = data or {}
    errors: dict[str, str] = {}
    reason = clean_text(data.get("reason"), "reason", settings.max_text, errors, multiline=True)
    if errors:
        raise PortalError(errors["reason"], 400, errors)
    if action == "approve":
        narrowed: Scope | None = None
        if any(k in data for k in ("sites", "orgs", "courses", "event_types")):
            narrowed = check_scope(data, set(settings.sites), errors)
            if errors:
                raise PortalError("Invalid approved scope.", 400, errors)
        if (row := await portal.get(key)).scope_change and row.status == "approved":
            await endpoint.approve_scope_change(portal, admin, row, narrowed)
        else:
            row = await portal.approve(admin, key, narrowed)
    elif action == "deny":
        if (row := await portal.get(key)).scope_change and row.status == "approved":
            await endpoint.deny_scope_change(portal, admin, row, reason)
        else:
            row = await portal.deny(admin, key, reason)
    elif action == "suspend":
        row = await portal.suspend(admin, key, reason)
    elif action == "resume":
        row = await portal.resume(admin, key)
    elif action == "revoke":
        row = await portal.revoke(admin, key, reason)
    else:
        raise NotFound("action")
    return msgspec.convert(public_view(row, (await portal.owner_emails()).get(row.owner)), IntegrationView)


@get("/admin/audit")
async def api_audit(request: Request, integration: FromQuery[str | None] = None) -> list[AuditView]:
    await api_admin(request)
    return [AuditView(at=e.at.isoformat(), actor=e.actor, action=e.action, integration=e.integration,
                      detail=e.detail) for e in await portal_of(request).audit_log(1000, integration)]


API = Router(path="/api/v1", route_handlers=[api_me, api_list, api_create, api_get, api_rotate, api_creds, api_cancel,
                                             api_admin_list, api_admin_action, api_audit], tags=["api"])


# ---------------------------------------------------------------- errors
_TITLES = {400: "Please check what you sent", 403: "Not allowed", 404: "Not found", 405: "Not allowed here",
           409: "Not possible in this state", 429: "Too many attempts", 500: "Something went wrong",
           502: "A hub service failed", 503: "Temporarily unavailable"}


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def _migrate_direct_access(portal: Portal) -> None:
    """Move direct subscriptions into their own NATS accounts once NATS answers (retried, never fatal)."""
    delay = 1.0
    while True:
        try:
            await portal.migrate_direct_access()
            return
        except Exception as exc:  # noqa: BLE001 - NATS down or store missing: logged, retried with backoff
            log.warning("moving direct subscriptions into their own accounts failed (%s); retrying in %.0f s",
                        exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 60.0)


def create_app(settings: PortalSettings) -> Litestar:
    """The portal app; start-up binds the database (running migrations) and shutdown closes NATS."""
    from portal import ops_routes  # its handlers use this module's helpers

    portal = Portal(settings)
    state: dict[str, Any] = {"portal": portal, "settings": settings, "engine": None, "recent_sessions": {}}

    async def startup(app: Litestar) -> None:
        app.state.engine = await db.migrate(settings)
        try:
            await asyncio.wait_for(portal.seal_stored_secrets(), 15)
        except (PortalError, TimeoutError) as exc:  # NATS not reachable yet: targets are sealed at their next write
            log.warning("could not seal stored secrets in the targets bucket: %s", getattr(exc, "message", "timeout"))
        app.state.migration = asyncio.create_task(_migrate_direct_access(portal))
        app.state.sweeper = asyncio.create_task(endpoint.overlap_loop(portal))

    async def shutdown(app: Litestar) -> None:
        for task in ("migration", "sweeper"):
            if app.state.get(task):
                app.state[task].cancel()
        await portal.close()
        if app.state.engine is not None:
            await db.close(app.state.engine)

    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
    env.globals["fmt"] = fmt
    env.globals["once_input"] = lambda: Markup(f'<input type="hidden" name="_once" value="{flash.new_once()}">')

    def error_page(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status", None) or getattr(exc, "status_code", 500)
        message = getattr(exc, "message", None) or getattr(exc, "detail", "Error")
        if _is_api(request):
            body: dict[str, Any] = {"error": message}
            if getattr(exc, "errors", None):
                body["errors"] = exc.errors
            return Response(body, status_code=status, headers=SECURITY_HEADERS)
        if isinstance(exc, LoginNeeded):
            where = "/login" + (f"?next={quote(exc.back)}" if exc.back != "/" else "")
            return with_box(Redirect(where, status_code=303), request, exc.box)
        if isinstance(exc, NotAuthorizedException):
            return Redirect("/login", status_code=303)
        csrf = status == 403 and "csrf" in str(message).lower()
        if csrf:
            message = ("This form had expired or was sent from another page (it failed the CSRF check), so nothing "
                       "was changed. Go back, reload the page and send it again.")
        # The CSRF check runs before any handler, so the account comes from the portal's recent sessions.
        user = request.state.get("account") or known_session(request)
        tpl = env.get_template("error.html")
        # Also for paths no route matches, where route middleware (SecurityHeaders) does not run.
        html = tpl.render(message=message, status=status, title=_TITLES.get(status, "Error"), csrf=csrf, user=user,
                          flash=flash.EMPTY, request=request, csrf_input="")
        return Response(html, status_code=status, media_type="text/html", headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})

    return Litestar(
        route_handlers=[home, health, signup_form, signup, verify_form, verify, forgot_form, forgot, reset_form,
                        reset, login_form, login, logout, my_integrations,
                        new_integration_form, create_integration, integration_page, rotate, retire, download_creds,
                        cancel, tokens_page, create_token, revoke_token, admin_home, admin_integration, admin_action,
                        audit_page, API, *ops_routes.PAGES, Router(path="/api/v1", route_handlers=ops_routes.API,
                                                                   tags=["api"], guards=[ops_routes.api_guard]),
                        create_static_files_router(path="/static", directories=[HERE / "static"])],
        on_startup=[startup],
        before_request=load_flash,
        on_shutdown=[shutdown],
        state=State(state),
        template_config=TemplateConfig(engine=JinjaTemplateEngine.from_environment(env)),
        csrf_config=CSRFConfig(secret=settings.resolved_secret(), cookie_secure=settings.cookie_secure,
                               exclude=["^/api/", "^/health$", "^/schema"]),
        middleware=[DefineMiddleware(SecurityHeaders, always_secure=settings.cookie_secure)],
        openapi_config=OpenAPIConfig(title="rthub portal", version="1.0.0", path="/schema"),
        exception_handlers={PortalError: error_page, HTTPException: error_page, NotFoundException: error_page},
    )
