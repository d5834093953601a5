"""Who may create Spaces and manage any Space (docs/keys.md): the bearer of an API key the
operator issued (``amphi keys create``), or of the operator key itself (the deployment's admin
secret, which opens /dashboard too). A Space's host key still manages its own Space
(``SpaceRegistry.authorize_host``); listeners and speakers need no key for what is their own.

    require()   401 api_key_required | invalid_api_key | revoked_api_key, 429 key_rate_limited
                (the key's GCRA budget, in the store: cluster-wide with --redis) or
                key_failures_limited (failed attempts from the client's address, on this node,
                checked before a key is looked at), 503 if the keys cannot be read (Redis away)
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from amphi.control.apikeys import ApiKey, ApiKeys, looks_like_key
from amphi.control.store import Store
from amphi.core.config import KeysConfig
from amphi.core.errors import (
    ApiKeyRequired,
    InvalidApiKey,
    KeyFailuresLimited,
    KeyRateLimited,
    RevokedApiKey,
    Unavailable,
)
from amphi.core.files import write_atomic
from amphi.core.gcra import GcraTable

log = logging.getLogger(__name__)

OPERATOR = "operator"  # the id under which the operator key is rate-limited and logged
HOW = "send Authorization: Bearer KEY (the operator makes one with `amphi keys create --name NAME`)"


class Access:
    def __init__(self, cfg: KeysConfig, keys: ApiKeys, operator_key: str, store: Store,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.keys = keys
        self._operator = operator_key.encode()
        self._store = store
        self._clock = clock
        self._failures = GcraTable(cfg.max_tracked)  # client address -> failed key attempts

    def is_key(self, credential: str) -> bool:
        """Whether a bearer credential is an API key or the operator key (else a host key or a grant)."""
        return looks_like_key(credential) or (bool(credential) and hmac.compare_digest(credential.encode(),
                                                                                       self._operator))

    async def require(self, authorization: str | None, client: str, what: str) -> str:
        """The id of the caller's key (``operator`` for the operator key); raises otherwise."""
        scheme, _, credential = (authorization or "").partition(" ")
        credential = credential.strip()
        if not authorization:
            raise ApiKeyRequired(f"{what} needs an API key: {HOW}")
        if scheme.lower() != "bearer" or not credential:
            raise ApiKeyRequired(f"Authorization must be 'Bearer KEY': {HOW}")
        cfg, now = self.cfg, self._clock()
        wait = self._failures.wait(client, cfg.failure_rate_per_s, cfg.failure_burst, now)
        if wait > 0:
            raise KeyFailuresLimited(f"too many failed key attempts from your address; try again in "
                                     f"{math.ceil(wait)} s", retry_after_s=wait)
        try:
            key_id = await self._verify(credential)
        except (InvalidApiKey, RevokedApiKey) as e:
            self._failures.charge(client, cfg.failure_rate_per_s, cfg.failure_burst, now)
            log.info("refused a key from %s: %s", client, e.code)
            raise
        wait = await self._store.take("apikey:" + key_id, cfg.rate_per_s, cfg.burst, now)
        if wait > 0:
            raise KeyRateLimited(f"this key is used faster than {cfg.rate_per_s:g} requests a second (burst "
                                 f"{cfg.burst}); try again in {math.ceil(wait)} s", retry_after_s=wait)
        return key_id

    async def _verify(self, credential: str) -> str:
        if hmac.compare_digest(credential.encode(), self._operator):
            return OPERATOR
        try:
            return (await self.keys.verify(credential)).id
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            log.warning("cannot read the API keys: %s", e)
            raise Unavailable("the API keys cannot be read just now; try again shortly", retry_after_s=2.0) from None

    async def demo_key(self, path: Path) -> tuple[ApiKey, str]:
        """The key named ``demo`` that ``amphi serve --demo`` prints: the one kept in ``path`` (mode
        0600, beside the operator key) if it is still valid, else a new one written there."""
        if path.exists():
            key = path.read_text().strip()
            try:
                return await self.keys.verify(key), key
            except (InvalidApiKey, RevokedApiKey):
                pass  # revoked or made for another cluster: a new one
        record, key = await self.keys.create("demo")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, key.encode(), mode=0o600)
        return record, key

    async def close(self) -> None:
        await self.keys.close()
