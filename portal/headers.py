"""Security headers on every portal response, and ``Secure`` on every cookie when the request came over https.

The pages have no inline script or style, so the policy allows scripts and styles from the portal only. The
OpenAPI viewer at ``/schema`` (Litestar's Redoc page) has an inline script and loads Redoc from its CDN: its
``<script>`` tags get a fresh nonce per response, and that page's policy allows only those (plus the inline
styles Redoc generates).
"""

from __future__ import annotations

import secrets

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SCHEMA_CSP = ("default-src 'self'; script-src 'nonce-{nonce}'; style-src 'self' 'unsafe-inline' https://fonts.googleapis.com; "
              "font-src 'self' https://fonts.gstatic.com; img-src 'self' data: https://cdn.jsdelivr.net https://cdn.redoc.ly; "
              "worker-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
FIXED = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
         (b"referrer-policy", b"no-referrer"), (b"cross-origin-opener-policy", b"same-origin")]
SECURITY_HEADERS = {"content-security-policy": CSP, **{k.decode(): v.decode() for k, v in FIXED}}


def secure_cookie(value: bytes) -> bytes:
    return value if b"; secure" in value.lower() else value + b"; Secure"


class SecurityHeaders:
    """ASGI middleware; ``always_secure`` marks cookies ``Secure`` even on plain http (``RTHUB_COOKIE_SECURE``)."""

    def __init__(self, app, always_secure: bool = False):
        self.app, self.always_secure = app, always_secure

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        secure = self.always_secure or scope.get("scheme") == "https"
        schema_page = scope.get("path", "").rstrip("/") in ("/schema", "/schema/redoc")
        nonce = secrets.token_urlsafe(16)
        csp = SCHEMA_CSP.format(nonce=nonce) if schema_page else CSP
        held: dict = {}

        def headers_of(message) -> list:
            headers = [(k, secure_cookie(v) if secure and k.lower() == b"set-cookie" else v)
                       for k, v in message.get("headers", []) if not (held and k.lower() == b"content-length")]
            present = {k.lower() for k, _ in headers}
            return headers + [(k, v) for k, v in [(b"content-security-policy", csp.encode()), *FIXED] if k not in present]

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                if schema_page:  # hold the start until the body is complete: it gets nonces, so a new length
                    held["start"], held["body"] = message, b""
                    return
                message = {**message, "headers": headers_of(message)}
            elif message["type"] == "http.response.body" and held:
                held["body"] += message.get("body", b"")
                if message.get("more_body"):
                    return
                data = held["body"].replace(b"<script", f'<script nonce="{nonce}"'.encode())
                headers = headers_of(held["start"]) + [(b"content-length", str(len(data)).encode())]
                await send({**held["start"], "headers": headers})
                message = {"type": "http.response.body", "body": data}
            await send(message)

        await self.app(scope, receive, send_with_headers)
