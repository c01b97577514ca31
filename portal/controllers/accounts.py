"""Accounts: sign-up with e-mail confirmation, password reset, log-in and log-out (pages, no guard: they are
how a person gets a session), and the API token's own account (``GET /api/v1/me``)."""

from __future__ import annotations

from litestar import Request, Response, get, post
from litestar.controller import Controller
from litestar.datastructures import Cookie
from litestar.params import FromQuery
from litestar.response import Redirect, Template

from portal import flash, outage
from portal.api_types import ERRORS, Health, Me
from portal.guards import PortalDep, UserDep, api_signed_in
from portal.services import Portal, PortalError
from portal.services.accounts import RESET, VERIFY
from portal.settings import PortalSettings
from portal.validation import password_problem, validate_signup
from portal.web import (
    SESSION_COOKIE,
    client_of,
    current_user,
    flash_box,
    form_of,
    go,
    page,
    portal_of,
    safe_back,
    with_box,
)


class AccountPages(Controller):
    """The pages a person uses before and around a session."""

    @get("/")
    async def home(self, request: Request) -> Redirect:
        user = await current_user(request)
        if user is None:
            return Redirect("/login", status_code=303)
        return Redirect("/admin" if user.is_admin else "/integrations", status_code=303)

    @get("/health")
    async def health(self, request: Request) -> Response[Health]:
        """200 "ok", or 503 "degraded" naming what is down (a load balancer or orchestrator reads the status)."""
        portal = portal_of(request)
        down = outage.down(portal)
        if down:
            detail = "; ".join(filter(None, (portal.nats_down(), outage.store_full(portal))))
            return Response(Health(status="degraded", down=down, detail=detail), status_code=503)
        return Response(Health(status="ok"))

    @get("/signup")
    async def signup_form(self, request: Request) -> Template:
        return page(request, "signup.html", form={}, errors={})

    @post("/signup")
    async def signup(self, request: Request, portal: PortalDep) -> Template:
        raw = await form_of(request)
        values, errors = validate_signup(raw)
        if not errors:
            try:
                await portal.signup(values["email"], values["name"], values["password"],
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

    @get("/verify")
    async def verify_form(self, request: Request, portal: PortalDep, token: FromQuery[str] = "") -> Template:
        return await _link_form(request, portal, token, VERIFY, "verify.html")

    @post("/verify")
    async def verify(self, request: Request, portal: PortalDep) -> Template | Redirect:
        raw = await form_of(request)
        token = str(raw.get("token", ""))[:200]
        try:
            session = await portal.confirm(token, str(raw.get("password", "")), client_of(request))
        except PortalError as exc:
            if exc.status == 400:
                return _problem(request, 400, exc.message)
            return page(request, "verify.html", status=exc.status, token=token, error=exc.message)
        welcome = await go(request, "/", "E-mail address confirmed: welcome.", session=session)
        return _with_session(request, welcome, session)

    @get("/forgot")
    async def forgot_form(self, request: Request) -> Template:
        return page(request, "forgot.html", error="")

    @post("/forgot")
    async def forgot(self, request: Request, portal: PortalDep) -> Template:
        email = str((await form_of(request)).get("email", ""))[:254]
        try:
            await portal.forgot(email, client_of(request))
        except PortalError as exc:
            return page(request, "forgot.html", status=exc.status, error=exc.message)
        return page(request, "mail_sent.html", message=f"If {email} has an account, we sent it a link to choose a new "
                    "password.")

    @get("/reset")
    async def reset_form(self, request: Request, portal: PortalDep, token: FromQuery[str] = "") -> Template:
        return await _link_form(request, portal, token, RESET, "reset.html")

    @post("/reset")
    async def reset(self, request: Request, portal: PortalDep) -> Template | Redirect:
        raw = await form_of(request)
        token = str(raw.get("token", ""))[:200]
        if problem := password_problem(str(raw.get("password") or "")):
            return page(request, "reset.html", status=400, token=token, error=problem)
        try:
            await portal.reset_password(token, str(raw.get("password")))
        except PortalError as exc:
            return _problem(request, exc.status, exc.message)
        return await go(request, "/login", "Password changed: log in with the new one.")

    @get("/login")
    async def login_form(self, request: Request) -> Template:
        back = request.query_params.get("next")
        return page(request, "login.html", form={}, error="", next=safe_back(back) if back else "")

    @post("/login")
    async def login(self, request: Request, portal: PortalDep) -> Template | Redirect:
        raw = await form_of(request)
        return await _login_response(request, portal, str(raw.get("email", "")), str(raw.get("password", "")),
                                     safe_back(raw.get("next") or "/"))

    @post("/logout")
    async def logout(self, request: Request, portal: PortalDep) -> Redirect:
        await portal.logout(request.cookies.get(SESSION_COOKIE))
        response = await go(request, "/login", "Logged out.", session="")
        response.cookies.append(Cookie(key=SESSION_COOKIE, value="", max_age=0, path="/"))
        return response


def _problem(request: Request, status: int, message: str) -> Template:
    """The error page for a link that cannot be used (expired, used, forged)."""
    response = page(request, "error.html", status=status, message=message)
    response.context["status"] = status
    return response


async def _login_response(request: Request, portal: Portal, email: str, password: str, back: str = "/"
                          ) -> Template | Redirect:
    try:
        token = await portal.login(email, password, client_of(request))
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


class AccountApi(Controller):
    path = "/api/v1"
    tags = ["api"]
    guards = [api_signed_in]

    @get("/me", responses=ERRORS)
    async def me(self, user: UserDep) -> Me:
        return Me(email=user.email, name=user.name, admin=user.is_admin)


async def _link_form(request: Request, portal: PortalDep, token: str, purpose: str, template: str) -> Template:
    """The page a mailed link opens (confirm the address, choose a new password), or why the link is no good."""
    try:
        await portal.check_link(token, purpose)
    except PortalError as exc:
        return _problem(request, exc.status, exc.message)
    return page(request, template, token=token, error="")
