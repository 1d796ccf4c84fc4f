"""Who may call the API: the Host allow-list, cross-site browser requests, API keys.

A local server is reachable from every web page the user opens. Two browser tricks reach
it without CORS ever asking: a "simple" cross-site POST (a form or multipart upload is
sent, only its answer is hidden from the page) and DNS rebinding (a page's own host name
re-pointed at 127.0.0.1, so the browser treats the API as same-origin). The Host check
stops the second, the Origin check the first; keys stop everyone else when the server is
bound beyond loopback. CORS itself (which pages may read answers) is Starlette's
CORSMiddleware, installed around this one when origins are configured.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from app.protocol.errors import error_body
from app.serving.tenancy import tenant_of_key
from app.settings import Settings

logger = logging.getLogger(__name__)

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
OPEN_PATHS = {"/health"}
"""Routes that never need a key (load balancers and health checks)."""


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str:
    """The host part of a Host header ("[::1]:8000" -> "::1", "a.b:80" -> "a.b")."""
    if value.startswith("["):
        return value[1:].split("]", 1)[0].lower()
    return value.rsplit(":", 1)[0].lower() if value.count(":") == 1 else value.lower()


def needs_key(path: str) -> bool:
    return path not in OPEN_PATHS and (path.startswith("/v1/") or path == "/metrics")


class AccessMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self._keys = [k.encode() for k in settings.api_keys]
        self._origins = set(settings.cors_origins)
        hosts = {h.lower() for h in settings.allowed_hosts}
        # Bound to loopback, only loopback names can be legitimate; bound wider, the
        # operator knows the names (allowed_hosts), else any Host is accepted.
        self._check_host = "*" not in hosts and (is_loopback(settings.host) or bool(hosts))
        self._hosts = LOOPBACK_NAMES | hosts
        if not self._keys and not is_loopback(settings.host):
            logger.warning("listening on %s without an API key: anyone who can reach this "
                           "address can use the server (set MLXD_API_KEYS or --api-key)",
                           settings.host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            status, body, extra = refusal
            await _reply(send, status, body, extra)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, headers: dict[str, str]
                 ) -> tuple[int, dict[str, object], list[tuple[bytes, bytes]]] | None:
        host = headers.get("host", "")
        if self._check_host and _host_name(host) not in self._hosts:
            return 400, error_body("Invalid Host header: this server answers only to "
                                   "its allowed host names", "invalid_request_error",
                                   None, "invalid_host"), []
        origin = headers.get("origin")
        if origin is not None and scope["method"] not in SAFE_METHODS \
                and not self._origin_allowed(origin, host):
            return 403, error_body("Cross-site request refused: the page's origin is not "
                                   "in this server's allowed origins (MLXD_CORS_ORIGINS)",
                                   "invalid_request_error", None, "origin_not_allowed"), []
        if not self._keys or not needs_key(scope["path"]) or scope["method"] == "OPTIONS":
            return None
        key = _bearer(headers.get("authorization", ""))
        if key is None:
            return 401, error_body("You didn't provide an API key. Send it in the "
                                   "Authorization header: 'Bearer YOUR_KEY'",
                                   "invalid_request_error", None, "missing_api_key"), \
                [(b"www-authenticate", b"Bearer")]
        given = key.encode()
        for known in self._keys:
            if secrets.compare_digest(given, known):
                scope.setdefault("state", {})["tenant"] = tenant_of_key(key)
                return None
        return 401, error_body("Incorrect API key provided", "invalid_request_error",
                               None, "invalid_api_key"), [(b"www-authenticate", b"Bearer")]

    def _origin_allowed(self, origin: str, host: str) -> bool:
        if "*" in self._origins or origin in self._origins:
            return True
        # A page the server itself serves (same scheme-less authority) is not cross-site.
        return urlsplit(origin).netloc.lower() == host.lower() and bool(host)


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def _reply(send: Send, status: int, body: dict[str, object],
                 extra: list[tuple[bytes, bytes]]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), *extra]})
    await send({"type": "http.response.body", "body": data})
