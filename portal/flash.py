"""What a page shows after a redirect, kept on the server: flash messages, a secret or token shown once, a form
typed before the session expired, and the used once-tokens that make a double-clicked form act once.

The browser holds only a random box id (cookie ``rthub_flash``); the texts are written by the server, so a link
cannot make the portal print a message (the old ``?msg=`` could), and reloading a page never repeats a POST.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from typing import Any

from portal.security import sha256
from portal.tables import FlashEntry, FormOnce

COOKIE = "rthub_flash"
KEEP = dt.timedelta(minutes=15)
MAX_STASH = 20_000  # characters of JSON: a request form, not a dump
MAX_PER_BOX = 4  # a message, a form, a secret: what one page needs
MAX_ENTRIES = 5000  # the whole table (x MAX_STASH characters at most: ~100 MB worst case)
# Never stashed across a log-in: credentials, passwords and the CSRF token of the dead session.
NOT_STASHED = frozenset({"password", "basic_auth", "bearer", "_csrf_token", "_once"})


def seal(box, text: str) -> str:
    """A secret kept here until its page is shown is sealed like every stored secret when the portal has a
    secret box (``hub.core.secretbox``, ``Portal.box``); ``box`` None keeps it as is."""
    return box.seal(text) if box is not None else text


def unseal(box, text: str | None) -> str | None:
    return box.open(text) if box is not None and text else text


def new_box() -> str:
    return secrets.token_urlsafe(24)


def new_once() -> str:
    return secrets.token_urlsafe(18)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key(box: str, session: str) -> str:
    """Entries belong to the box *and* the session: a box id planted in a victim's browser reads nothing of
    theirs once they are logged in."""
    return sha256(f"{box}|{session}")


async def put(box: str, session: str, kind: str, text: str, path: str = "") -> None:
    """Keep a message (or a typed form) for the next page of this box. Bounded: entries expire after ``KEEP``,
    a box holds its newest ``MAX_PER_BOX`` and the table ``MAX_ENTRIES`` (oldest dropped first), so requests
    without a session, each with a fresh box, cannot grow it without limit."""
    key = _key(box, session)
    await FlashEntry.delete().where(FlashEntry.created < _now() - KEEP)
    await _drop(await FlashEntry.select(FlashEntry.id).where(FlashEntry.box == key)
                 .order_by(FlashEntry.id, ascending=False).offset(MAX_PER_BOX - 1).limit(1000))
    over = await FlashEntry.count() - MAX_ENTRIES + 1
    if over > 0:
        await _drop(await FlashEntry.select(FlashEntry.id).order_by(FlashEntry.id).limit(over))
    await FlashEntry(box=key, kind=kind, text=text, path=path[:300]).save()


async def _drop(rows: list[dict]) -> None:
    if rows:
        await FlashEntry.delete().where(FlashEntry.id.is_in([r["id"] for r in rows]))


async def carry(box: str | None, old_session: str, new_session: str) -> None:
    """Hand what was kept before a log-in (the typed form, the message) to the new session."""
    if box and len(box) <= 100:
        await FlashEntry.update({FlashEntry.box: _key(box, new_session)}).where(
            FlashEntry.box == _key(box, old_session))


async def take(box: str | None, session: str, path: str) -> dict[str, Any]:
    """Everything for this page, removed as it is read: ``{"info": [...], "error": [...], "secret": str|None,
    "token": str|None, "form": dict|None}`` (a stashed form only on the page it was typed on)."""
    out: dict[str, Any] = {"info": [], "error": [], "warning": [], "secret": None, "token": None, "form": None}
    if not box or len(box) > 100:
        return out
    rows = await FlashEntry.objects().where((FlashEntry.box == _key(box, session)) & (FlashEntry.created >= _now() - KEEP)
                                            ).order_by(FlashEntry.id)
    used = []
    for row in rows:
        if row.kind == "form":
            if row.path != path:
                continue
            out["form"] = json.loads(row.text)
        elif row.kind in ("info", "error", "warning"):
            out[row.kind].append(row.text)
        else:
            out[row.kind] = row.text
        used.append(row.id)
    if used:
        await FlashEntry.delete().where(FlashEntry.id.is_in(used))
    return out


def stashable(form: dict[str, Any]) -> dict[str, Any]:
    """The typed fields worth keeping across a log-in, bounded, never a credential."""
    out: dict[str, Any] = {}
    for key, value in list(form.items())[:40]:
        if key in NOT_STASHED or len(key) > 40:
            continue
        out[key] = value[:4000] if isinstance(value, str) else [str(v)[:200] for v in value[:50]]
    return out


async def claim(token: Any) -> str | None:
    """``None`` when this submission is the first with ``token`` (or carries none); else where the first one
    led (``""`` while it is still running)."""
    if not isinstance(token, str) or not token or len(token) > 64:
        return None
    await FormOnce.delete().where(FormOnce.created < _now() - dt.timedelta(days=1))
    try:
        await FormOnce(token=token).save()
        return None
    except Exception:  # noqa: BLE001 - unique violation: this form was submitted before
        row = await FormOnce.objects().get(FormOnce.token == token)
        return row.location if row else ""


async def done(token: Any, location: str) -> None:
    if isinstance(token, str) and token and len(token) <= 64:
        await FormOnce.update({FormOnce.location: location[:300]}).where(FormOnce.token == token)


EMPTY: dict[str, Any] = {"info": [], "error": [], "warning": [], "secret": None, "token": None, "form": None}
