"""Readers of a NATS ``.creds`` file (public JWT part only, never the seed): what its user may do.

In the kernel so that connecting (:mod:`hub.core.natsconn`) needs nothing of :mod:`hub.auth`, which writes them.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from hub.core.subjects import BUS_API_PREFIX, subject_matches


def creds_jwt(creds_text: str) -> str:
    """The user JWT inside a ``.creds`` text."""
    lines = creds_text.splitlines()
    for i, line in enumerate(lines):
        if "BEGIN NATS USER JWT" in line and i + 1 < len(lines):
            return lines[i + 1].strip()
    raise ValueError("no user JWT in this credentials text")


def _nats_claims(creds: str | Path) -> dict:
    """The ``nats`` claims of a ``.creds`` file or text, unverified (the server verifies them)."""
    text = (
        Path(creds).read_text() if not isinstance(creds, str) or "BEGIN NATS USER JWT" not in creds else creds
    )
    body = creds_jwt(text).split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["nats"]


def inbox_prefix_of(sub_allow: list[str]) -> str | None:
    """The private inbox prefix granted by a user's subscribe allow list (``_INBOX_x.>`` -> ``_INBOX_x``)."""
    for subj in sub_allow:
        if subj.startswith("_INBOX_") and subj.endswith(".>"):
            return subj[:-2]
    return None


def creds_allow(creds: str | Path | None, subject: str) -> bool:
    """Whether a ``.creds`` file's user may publish to ``subject`` (no creds, or no allow list: yes). Lets a
    tool skip what its user may not do (a per-site publisher declaring streams) instead of timing out."""
    if not creds:
        return True
    pub = _nats_claims(creds).get("pub", {})
    if "allow" not in pub:
        return not pub.get("deny")
    return any(subject_matches(p, subject) for p in pub["allow"])


def creds_inbox_prefix(creds: str | Path) -> str | None:
    """The private inbox prefix a ``.creds`` file's user must connect with (``None``: the default is fine).

    Lets any client connect without knowing which user it is, e.g.
    ``nats.connect(..., user_credentials=path, inbox_prefix=creds_inbox_prefix(path) or "_INBOX")``.
    """
    return inbox_prefix_of(_nats_claims(creds).get("sub", {}).get("allow", []))


def creds_api_prefix(creds: str | Path | None) -> str:
    """The JetStream API prefix a ``.creds`` file's user reaches the hub's streams with: ``BUS_API_PREFIX`` for
    a user of the event bus's own account (its allow list names it), else the usual ``$JS.API``."""
    if creds:
        allow = _nats_claims(creds).get("pub", {}).get("allow", [])
        if any(p.startswith(BUS_API_PREFIX + ".") for p in allow):
            return BUS_API_PREFIX
    return "$JS.API"
