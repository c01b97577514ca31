"""NATS JWTs (v2) written by hand: nkeys signs, this module builds and reads the claims.

A NATS JWT is ``base64url(header).base64url(claims).base64url(ed25519 signature)`` without padding; the
header is ``{"typ":"JWT","alg":"ed25519-nkey"}`` and the issuer's nkey signs ``header.claims``. Field names
follow the nats-io/jwt v2 claims (``nats.type``, ``nats.version: 2``, account ``limits`` with
``mem_storage``/``disk_storage`` so the account gets JetStream, user ``pub``/``sub`` allow lists, ``exp``).
Pure functions: no I/O, so they are unit-tested directly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from typing import Any

import nkeys

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
PREFIXES = {"operator": nkeys.PREFIX_BYTE_OPERATOR, "account": nkeys.PREFIX_BYTE_ACCOUNT,
            "user": nkeys.PREFIX_BYTE_USER}

# An account with every limit lifted and JetStream enabled (the server needs mem/disk storage set).
UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True,
             "conn": -1, "leaf": -1}
JETSTREAM_UNLIMITED = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


def new_seed(kind: str) -> bytes:
    """A fresh nkey seed (``SO...``, ``SA...`` or ``SU...``) for an operator, account or user."""
    return nkeys.encode_seed(os.urandom(32), PREFIXES[kind])


def public_key(seed: bytes) -> str:
    kp = nkeys.from_seed(bytearray(seed))
    try:
        return kp.public_key.decode()
    finally:
        kp.wipe()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _jti(claims: dict[str, Any]) -> str:
    """Claims hash as the JWT id, the way nats-io/jwt computes it (sha512/256 of the claims without jti)."""
    body = json.dumps({**claims, "jti": ""}, sort_keys=True, separators=(",", ":")).encode()
    return base64.b32encode(hashlib.new("sha512_256", body).digest()).decode().rstrip("=")


def encode(claims: dict[str, Any], issuer_seed: bytes) -> str:
    """Sign ``claims`` with the issuer's seed; fills ``iss`` and ``jti``."""
    claims = dict(claims)
    claims["iss"] = public_key(issuer_seed)
    claims["jti"] = _jti(claims)
    head = _b64(json.dumps(HEADER, separators=(",", ":")).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    kp = nkeys.from_seed(bytearray(issuer_seed))
    try:
        sig = kp.sign(f"{head}.{body}".encode())
    finally:
        kp.wipe()
    return f"{head}.{body}.{_b64(sig)}"


def decode(token: str, verify: bool = True) -> dict[str, Any]:
    """The claims of ``token``; with ``verify`` the signature must be the issuer's (``iss``)."""
    try:
        head, body, sig = token.strip().split(".")
        claims = json.loads(_unb64(body))
        header = json.loads(_unb64(head))
    except ValueError as exc:
        raise ValueError(f"not a JWT: {exc}") from None
    if header.get("alg") != HEADER["alg"]:
        raise ValueError(f"unsupported JWT algorithm {header.get('alg')!r}")
    if verify:
        if not _verify(claims["iss"], f"{head}.{body}".encode(), _unb64(sig)):
            raise ValueError("JWT signature does not match its issuer")
    return claims


def _verify(public: str, data: bytes, sig: bytes) -> bool:
    """Ed25519 check against an nkey public key (nkeys 0.2 can only verify with a seed in hand)."""
    import nacl.exceptions
    import nacl.signing

    raw = base64.b32decode(public + "=" * (-len(public) % 8))[1:-2]
    try:
        nacl.signing.VerifyKey(raw).verify(data, sig)
    except nacl.exceptions.BadSignatureError:
        return False
    return True


def _base(name: str, subject: str, now: float | None, expires: float | None) -> dict[str, Any]:
    claims: dict[str, Any] = {"iat": int(now if now is not None else time.time()), "name": name, "sub": subject}
    if expires is not None:
        claims["exp"] = int(expires)
    return claims


def operator_claims(name: str, operator_pub: str, system_account: str, now: float | None = None,
                    signing_keys: list[str] | None = None) -> dict:
    """The operator; ``signing_keys`` may sign account JWTs in its place (the operator seed can stay offline)."""
    nats: dict[str, Any] = {"system_account": system_account, "type": "operator", "version": 2}
    if signing_keys:
        nats["signing_keys"] = list(signing_keys)
    return {**_base(name, operator_pub, now, None), "nats": nats}


def account_claims(name: str, account_pub: str, jetstream: bool, revocations: dict[str, int] | None = None,
                   now: float | None = None, exports: list[dict] | None = None, imports: list[dict] | None = None,
                   limits: dict[str, Any] | None = None) -> dict:
    """An account; ``jetstream`` lifts its storage limits, ``revocations`` maps user key (or ``*``: every user
    issued up to then) -> unix time; ``exports``/``imports`` as built by :func:`export`/:func:`import_`."""
    acc_limits = dict(UNLIMITED)
    if jetstream:
        acc_limits.update(JETSTREAM_UNLIMITED)
    acc_limits.update(limits or {})
    nats: dict[str, Any] = {"limits": acc_limits, "default_permissions": {"pub": {}, "sub": {}},
                            "type": "account", "version": 2}
    if exports:
        nats["exports"] = list(exports)
    if imports:
        nats["imports"] = list(imports)
    if revocations:
        nats["revocations"] = dict(sorted(revocations.items()))
    return {**_base(name, account_pub, now, None), "nats": nats}


def export(name: str, subject: str, kind: str, stream_response: bool = False) -> dict:
    """A private export (``token_req``): only an account holding an activation signed by the exporter may
    import it. ``stream_response`` lets one request get many replies (a pull request's batch)."""
    claims: dict[str, Any] = {"name": name, "subject": subject, "type": kind, "token_req": True}
    if kind == "service":
        claims["response_type"] = "Stream" if stream_response else "Singleton"
    return claims


def import_(name: str, subject: str, kind: str, account: str, token: str, local: str | None = None) -> dict:
    """An import of ``subject`` from ``account`` with its activation ``token``, under the same subject or
    ``local`` (same wildcards; e.g. a JetStream API prefix)."""
    claims = {"name": name, "subject": subject, "account": account, "token": token, "type": kind}
    if local is not None and local != subject:
        claims["local_subject"] = local
    return claims


def activation_claims(name: str, importer_pub: str, subject: str, kind: str, now: float | None = None) -> dict:
    """The exporter's permission for one account (``sub``) to import exactly ``subject``."""
    return {**_base(name, importer_pub, now, None),
            "nats": {"subject": subject, "kind": kind, "type": "activation", "version": 2}}


def user_claims(name: str, user_pub: str, pub_allow: list[str] | None = None, sub_allow: list[str] | None = None,
                expires: float | None = None, now: float | None = None) -> dict:
    """A user; ``None`` allow lists mean "no restriction", an empty list means "nothing"."""
    nats: dict[str, Any] = {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                            "type": "user", "version": 2}
    if pub_allow is not None:
        nats["pub"] = {"allow": list(pub_allow)} if pub_allow else {"deny": [">"]}
    if sub_allow is not None:
        nats["sub"] = {"allow": list(sub_allow)} if sub_allow else {"deny": [">"]}
    return {**_base(name, user_pub, now, expires), "nats": nats}


def creds(user_jwt: str, user_seed: bytes) -> str:
    """The ``.creds`` text nats clients read: the user JWT and its nkey seed (a secret)."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed.decode()}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )
