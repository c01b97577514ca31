"""API tokens: made (shown once), listed and revoked from the tokens page."""

from __future__ import annotations

from typing import Any

from litestar import Request, get, post
from litestar.controller import Controller
from litestar.params import FromPath
from litestar.response import Redirect, Template

from portal import flash
from portal.guards import PortalDep, UserDep, signed_in
from portal.validation import clean_text
from portal.web import form_of, go, once_claimed, page


class TokenPages(Controller):
    guards = [signed_in]

    @get("/tokens")
    async def tokens_page(self, request: Request, user: UserDep, portal: PortalDep) -> Template:
        return page(request, "tokens.html", tokens=await portal.list_tokens(user),
                    new_token=(request.state.get("flash") or flash.EMPTY)["token"], errors={})

    @post("/tokens")
    async def create_token(self, request: Request, user: UserDep, portal: PortalDep) -> Template | Redirect:
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

    @post("/tokens/{token_id:int}/revoke")
    async def revoke_token(self, request: Request, user: UserDep, portal: PortalDep, token_id: FromPath[int]) -> Redirect:
        await portal.revoke_token(user, token_id)
        return await go(request, "/tokens", "Token revoked.")


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

