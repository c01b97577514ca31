"""Security headers on every portal response, and ``Secure`` on every cookie when the request came over https.

The pages have no inline script or style, so the policy allows scripts and styles from the portal only. The
OpenAPI viewer at ``/schema`` loads its script from a CDN, so that one path gets a policy allowing it.
"""

from __future__ import annotations

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SCHEMA_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://unpkg.com; "
              "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://unpkg.com https://fonts.googleapis.com; "
              "font-src 'self' https://fonts.gstatic.com; img-src 'self' data: https://cdn.redoc.ly; "
              "worker-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
FIXED = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
         (b"referrer-policy", b"no-referrer"), (b"cross-origin-opener-policy", b"same-origin")]


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
        csp = SCHEMA_CSP if scope.get("path", "").startswith("/schema") else CSP

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [(k, secure_cookie(v) if secure and k.lower() == b"set-cookie" else v)
                           for k, v in message.get("headers", [])]
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in [(b"content-security-policy", csp.encode()), *FIXED] if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
