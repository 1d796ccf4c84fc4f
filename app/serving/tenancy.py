"""Whose caches a request may see: with API keys on, each key is a tenant, and its named
sessions, prefix reuse and stored responses are its own.

A shared prefix cache is a timing and `cached_tokens` oracle: a client that can make the
server reuse another client's prompt learns that prompt token by token. Scoping every
cache lookup to the tenant closes that between keys; `cache_salt` (vLLM's name) narrows a
request further, to the requests that send the same salt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

SEPARATOR = "/"


def tenant_of_key(api_key: str) -> str:
    """A stable, non-reversible tenant id for an API key (it lands in cache keys and
    file names, never the key itself)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class CacheScope:
    tenant: str | None = None
    """None when the server has no API keys: one tenant, every cache shared."""
    salt: str | None = None

    def salted(self, salt: str | None) -> CacheScope:
        return self if salt is None else CacheScope(self.tenant, salt)

    @property
    def namespace(self) -> str:
        """The KV prefix-reuse namespace ("" = shared by all requests)."""
        salt = "" if self.salt is None else \
            "#" + hashlib.sha256(self.salt.encode()).hexdigest()[:16]
        return (self.tenant or "") + salt

    def key(self, name: str | None) -> str | None:
        """The internal name of a client's session or stored-response key."""
        if name is None or self.tenant is None:
            return name
        return self.tenant + SEPARATOR + name

    def owns(self, internal: str) -> bool:
        return self.tenant is None or internal.startswith(self.tenant + SEPARATOR)

    def public(self, internal: str) -> str:
        """The name the client knows for one of its own internal keys."""
        if self.tenant is None:
            return internal
        return internal[len(self.tenant) + len(SEPARATOR):]


SHARED = CacheScope()
