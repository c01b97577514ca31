"""What every page handler shares: the session cookie and its account, log-in redirects that bring the person
back (with what they typed), forms, templates, and flash messages that wait on the server for the next page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from litestar import Request, Response
from litestar.datastructures import Cookie
from litestar.exceptions import NotAuthorizedException
from litestar.response import Redirect, Template

from hub.core.delivery_kinds import KINDS
from portal import flash, security
from portal.services import Portal
from portal.settings import PortalSettings
from portal.tables import Account
from portal.validation import DELIVERY_LABELS

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
    if name == "integration_new.html":  # event types are picked from the catalog, not typed blind
        from portal.catalog import catalog

        context.setdefault("event_types", catalog())
    context["kinds"] = KINDS  # hub.core.delivery_kinds: what a page may ask of a delivery kind
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


