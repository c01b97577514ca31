"""The portal web app: Jinja2 pages for people (session cookie + CSRF), a JSON API for programs (bearer API
tokens, OpenAPI at ``/schema``). Controllers by domain (:mod:`portal.controllers`) call the services
(:mod:`portal.services`); guards decide who may call what (:mod:`portal.guards`). Neither holds business rules."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader
from litestar import Litestar, Request, Response
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotAuthorizedException, NotFoundException
from litestar.logging.config import LoggingConfig
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from markupsafe import Markup
from msgspec import UNSET

from portal import db, flash, jobs
from portal.api_types import ApiError
from portal.controllers import CONTROLLERS
from portal.deliveries import fmt
from portal.guards import DEPENDENCIES
from portal.headers import SECURITY_HEADERS, SecurityHeaders
from portal.limits import BodyLimit
from portal.outage import nats_gate
from portal.services import Portal, PortalError
from portal.settings import PortalSettings
from portal.web import HERE, LoginNeeded, known_session, load_flash, with_box

log = logging.getLogger("rthub.portal.web")


# ---------------------------------------------------------------- errors
_TITLES = {400: "Please check what you sent", 403: "Not allowed", 404: "Not found", 405: "Not allowed here",
           409: "Not possible in this state", 429: "Too many attempts", 500: "Something went wrong",
           502: "A hub service failed", 503: "Temporarily unavailable"}


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def create_app(settings: PortalSettings) -> Litestar:
    """The portal app; start-up binds the database (running migrations) and shutdown closes NATS."""
    portal = Portal(settings)
    state: dict[str, Any] = {"portal": portal, "settings": settings, "engine": None, "recent_sessions": {}}

    async def startup(app: Litestar) -> None:
        app.state.engine = await db.migrate(settings)
        try:
            await asyncio.wait_for(portal.seal_stored_secrets(), 15)
        except (PortalError, TimeoutError) as exc:  # NATS not reachable yet: targets are sealed at their next write
            log.warning("could not seal stored secrets in the targets bucket: %s", getattr(exc, "message", "timeout"))
        app.state.jobs = jobs.start(portal)

    async def shutdown(app: Litestar) -> None:
        jobs.stop(app.state.get("jobs") or [])
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
            body = ApiError(error=str(message), errors=getattr(exc, "errors", None) or UNSET)
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
        route_handlers=[*CONTROLLERS, create_static_files_router(path="/static", directories=[HERE / "static"])],
        dependencies=DEPENDENCIES,
        on_startup=[startup],
        before_request=load_flash,
        on_shutdown=[shutdown],
        state=State(state),
        template_config=TemplateConfig(engine=JinjaTemplateEngine.from_environment(env)),
        csrf_config=CSRFConfig(secret=settings.resolved_secret(), cookie_secure=settings.cookie_secure,
                               exclude=["^/api/", "^/health$", "^/schema"]),
        middleware=[lambda app: BodyLimit(app, settings.max_body_bytes),
                    DefineMiddleware(SecurityHeaders, always_secure=settings.cookie_secure), nats_gate],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(title="rthub portal", version="1.0.0", path="/schema"),
        exception_handlers={PortalError: error_page, HTTPException: error_page, NotFoundException: error_page},
        # Litestar's default config replaces the root logger's handler with its own plain-text format: the
        # portal logs through the process's logging set up by ``rthub`` (JSON with RTHUB_LOG_JSON/--log-json).
        logging_config=LoggingConfig(configure_root_logger=False,
                                     loggers={"litestar": {"level": "INFO", "propagate": True, "handlers": []}}),
    )

