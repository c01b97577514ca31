"""Standard Webhooks signatures: ``v1,<base64 HMAC-SHA256(id.timestamp.body)>`` per secret.

During a secret rotation a target lists two secrets; the receiver accepts either signature.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets as _secrets
import time

PREFIX = "whsec_"


@functools.lru_cache(maxsize=4096)  # decoded once per secret, not per request (1.3% of a busy deliverer)
def secret_key(secret: str) -> bytes:
    raw = secret[len(PREFIX):] if secret.startswith(PREFIX) else secret
    key = base64.b64decode(raw + "=" * (-len(raw) % 4))
    if not key:
        raise ValueError("empty signing secret")
    return key


def new_secret() -> str:
    return PREFIX + base64.b64encode(_secrets.token_bytes(24)).decode()


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(secrets: list[str], msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers; several secrets give space-separated signatures."""
    ts = int(time.time()) if timestamp is None else timestamp
    out = {"webhook-id": msg_id, "webhook-timestamp": str(ts)}
    if secrets:
        out["webhook-signature"] = " ".join(signature(s, msg_id, ts, body) for s in secrets)
    return out
