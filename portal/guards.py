"""Who may call a route (Litestar guards) and what a handler is given (dependencies).

Guards run before the body is parsed: a stranger gets a log-in redirect (pages) or 401 (API), never a
validation error. They leave what they found on ``request.state`` (the account, the integration), and the
dependencies below hand it to the handlers, so no handler looks a person or a row up itself."""

from __future__ import annotations

from litestar import Request
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers import BaseRouteHandler

from portal.services import Portal, PortalError
from portal.settings import PortalSettings
from portal.tables import Account, Integration
from portal.web import current_user, login_needed, portal_of

UNVERIFIED = ("Confirm the owner's e-mail address before requesting access (the link is in the mail sent at "
              "sign-up).")


# ---------------------------------------------------------------- pages (session cookie)
async def signed_in(request: Request, _: BaseRouteHandler) -> None:
    """A live session, else the log-in page (which brings the person back here)."""
    if await current_user(request) is None:
        raise await login_needed(request)


async def administrator(request: Request, handler: BaseRouteHandler) -> None:
    await signed_in(request, handler)
    if not request.state.account.is_admin:
        raise PermissionDeniedException("Administrators only.")


async def verified(request: Request, _: BaseRouteHandler) -> None:
    """Only an account whose e-mail is confirmed may request access (after ``signed_in``/``api_signed_in``)."""
    if not request.state.account.email_verified:
        raise PortalError(UNVERIFIED, 403)


async def owner(request: Request, _: BaseRouteHandler) -> None:
    """The integration in the path belongs to the account (administrators use the admin routes): else 404."""
    request.state.integration = await portal_of(request).get_owned(request.path_params["key"], request.state.account)


async def owner_or_admin(request: Request, _: BaseRouteHandler) -> None:
    """The account's own integration, or any for an administrator (the delivery operations)."""
    portal, user, key = portal_of(request), request.state.account, request.path_params["key"]
    request.state.integration = await (portal.get(key) if user.is_admin else portal.get_owned(key, user))


async def any_integration(request: Request, _: BaseRouteHandler) -> None:
    """For administrators: the integration in the path, whoever owns it."""
    request.state.integration = await portal_of(request).get(request.path_params["key"])


# ---------------------------------------------------------------- JSON API (bearer tokens, no cookies)
async def api_signed_in(request: Request, _: BaseRouteHandler) -> None:
    """A valid API token; a read-only token is refused on every method that can change state."""
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    got = await portal_of(request).token_access(token)
    if got is None:
        raise NotAuthorizedException("Send a valid API token: Authorization: Bearer rth_... (it may have expired).")
    user, row = got
    if row.read_only and request.method not in ("GET", "HEAD", "OPTIONS"):
        raise PermissionDeniedException("This API token is read-only.")
    request.state.account = user


async def api_administrator(request: Request, handler: BaseRouteHandler) -> None:
    await api_signed_in(request, handler)
    if not request.state.account.is_admin:
        raise PermissionDeniedException("Administrators only.")


# ---------------------------------------------------------------- dependencies
def _portal(request: Request) -> Portal:
    return request.app.state.portal


def _settings(request: Request) -> PortalSettings:
    return request.app.state.settings


def _user(request: Request) -> Account:
    return request.state.account


def _row(request: Request) -> Integration:
    return request.state.integration


# What handlers declare: ``user: UserDep`` is the signed-in account, ``row: RowDep`` the integration a guard
# found for the path's ``key``, ``portal: PortalDep`` the services, ``settings: SettingsDep`` the settings.
PortalDep = NamedDependency[Portal]
SettingsDep = NamedDependency[PortalSettings]
UserDep = NamedDependency[Account]
RowDep = NamedDependency[Integration]

DEPENDENCIES = {
    "portal": Provide(_portal, sync_to_thread=False),
    "settings": Provide(_settings, sync_to_thread=False),
    "user": Provide(_user, sync_to_thread=False),
    "row": Provide(_row, sync_to_thread=False),
}
