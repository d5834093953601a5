"""API keys: what the operator issues so that people and programs may create Spaces and manage
any Space (docs/keys.md). A key is shown once, when it is made; only a hash of its secret is kept.

    key        amphi_<id>_<secret>    id: 12 hex digits (found by it), secret: 32 random bytes, base64url
    record     ApiKey: id, name, SHA-256 of the secret (hex), created_at, revoked_at, last_used_at
    KeyBook    where the records live:
    ├── FileKeyBook    one node: ``<data_dir>/api_keys.json`` (mode 0600, written atomically under a
    │                  lock); re-read when it changes on disk, so a revocation by ``amphi keys`` counts
    │                  at the next request
    └── RedisKeyBook   a cluster: the hash ``<prefix>api_keys`` (id -> record), last use apart in
                       ``<prefix>api_keys:used``; looked up on every check, so every node sees a revocation
    ApiKeys    create / list / revoke / verify over a book (verify: 401 invalid_api_key or revoked_api_key)

A secret of 256 random bits needs no slow hash: SHA-256 of it cannot be reversed or guessed, and the
stored digest is compared in constant time (``hmac.compare_digest``). Last use is written at most once
a minute per key (``USED_EVERY_S``): it says "to the minute", and a check costs no write.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import orjson

from amphi.core.errors import InvalidApiKey, MalformedBody, NotFound, RevokedApiKey
from amphi.core.files import write_atomic

log = logging.getLogger(__name__)

PREFIX = "amphi_"
KEY_RE = re.compile(r"amphi_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
FILE_NAME = "api_keys.json"
MAX_NAME = 100
USED_EVERY_S = 60.0  # a key's last use is stored at most this often
_DUMMY = hashlib.sha256(b"no such key").hexdigest()


def looks_like_key(credential: str) -> bool:
    """Whether a bearer credential is meant as an API key (its prefix), rather than a host key or a grant."""
    return credential.startswith(PREFIX)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> tuple[str, str, str]:
    """(id, secret, the key as given to its holder)."""
    key_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return key_id, secret, f"{PREFIX}{key_id}_{secret}"


def parse(key: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    m = KEY_RE.fullmatch(key)
    return (m.group(1), m.group(2)) if m else None


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    hash: str  # SHA-256 of the secret, hex; never the key
    created_at: float
    revoked_at: float | None = None
    last_used_at: float | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, object]) -> ApiKey:
        return cls(**d)  # type: ignore[arg-type]

    def public(self) -> dict[str, object]:
        """What ``amphi keys list --json`` shows: everything but the hash."""
        return {"id": self.id, "name": self.name, "created_at": self.created_at, "last_used_at": self.last_used_at,
                "revoked": self.revoked, "revoked_at": self.revoked_at}


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise MalformedBody(f"a key's name is 1 to {MAX_NAME} characters")
    return name.strip()


class KeyBook(Protocol):
    async def get(self, key_id: str) -> ApiKey | None: ...

    async def all(self) -> list[ApiKey]: ...

    async def add(self, record: ApiKey) -> None: ...

    async def revoke(self, key_id: str, when: float) -> ApiKey: ...  # NotFound

    async def used(self, key_id: str, when: float) -> None: ...

    async def close(self) -> None: ...


class FileKeyBook:
    """``<data_dir>/api_keys.json``: ``{"keys": [record, ...]}``. Every change is read, changed and
    written under an exclusive lock (``api_keys.lock``), so ``amphi keys`` and a running node never
    lose each other's writes; a node re-reads the file when its inode, size or mtime moved."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / FILE_NAME
        self._lock_path = data_dir / "api_keys.lock"
        self._seen: tuple[int, int, int] | None = None
        self._keys: dict[str, ApiKey] = {}

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _fresh(self) -> dict[str, ApiKey]:
        sig = self._signature()
        if sig != self._seen:
            self._keys = self._read() if sig is not None else {}
            self._seen = sig
        return self._keys

    def _read(self) -> dict[str, ApiKey]:
        data = orjson.loads(self.path.read_bytes())
        return {d["id"]: ApiKey.from_json(d) for d in data.get("keys", [])}

    def _change(self, change: Callable[[dict[str, ApiKey]], ApiKey]) -> ApiKey:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            keys = self._read() if self.path.exists() else {}
            result = change(keys)
            body = {"keys": [k.to_json() for k in keys.values()]}
            write_atomic(self.path, orjson.dumps(body, option=orjson.OPT_INDENT_2), mode=0o600)
            os.chmod(self.path, 0o600)  # write_atomic's mode is only for a new temporary file; keep it so
            return result
        finally:
            os.close(fd)  # releases the lock

    async def get(self, key_id: str) -> ApiKey | None:
        return self._fresh().get(key_id)

    async def all(self) -> list[ApiKey]:
        return sorted(self._fresh().values(), key=lambda k: k.created_at)

    async def add(self, record: ApiKey) -> None:
        def add(keys: dict[str, ApiKey]) -> ApiKey:
            keys[record.id] = record
            return record
        await asyncio.to_thread(self._change, add)

    async def revoke(self, key_id: str, when: float) -> ApiKey:
        def revoke(keys: dict[str, ApiKey]) -> ApiKey:
            if key_id not in keys:
                raise NotFound(f"no API key {key_id!r}")
            if not keys[key_id].revoked:
                keys[key_id] = replace(keys[key_id], revoked_at=when)
            return keys[key_id]
        return await asyncio.to_thread(self._change, revoke)

    async def used(self, key_id: str, when: float) -> None:
        def used(keys: dict[str, ApiKey]) -> ApiKey:
            if key_id in keys:
                keys[key_id] = replace(keys[key_id], last_used_at=when)
            return keys.get(key_id)  # type: ignore[return-value]
        await asyncio.to_thread(self._change, used)

    async def close(self) -> None:
        pass


class RedisKeyBook:
    """The hash ``<prefix>api_keys`` (id -> JSON record) shared by every node of a cluster; last
    use in ``<prefix>api_keys:used`` (id -> time), so a use never rewrites a record."""

    def __init__(self, url: str, prefix: str = "amphi:") -> None:
        import redis.asyncio as aioredis

        self._r = aioredis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2.0)
        self._keys = prefix + "api_keys"
        self._used = prefix + "api_keys:used"

    def _record(self, raw: bytes, used: bytes | None) -> ApiKey:
        record = ApiKey.from_json(orjson.loads(raw))
        return replace(record, last_used_at=float(used)) if used is not None else record

    async def get(self, key_id: str) -> ApiKey | None:
        raw = await self._r.hget(self._keys, key_id)
        return None if raw is None else ApiKey.from_json(orjson.loads(raw))

    async def all(self) -> list[ApiKey]:
        records, used = await self._r.hgetall(self._keys), await self._r.hgetall(self._used)
        keys = [self._record(raw, used.get(key_id)) for key_id, raw in records.items()]
        return sorted(keys, key=lambda k: k.created_at)

    async def add(self, record: ApiKey) -> None:
        await self._r.hset(self._keys, record.id, orjson.dumps(record.to_json()))

    async def revoke(self, key_id: str, when: float) -> ApiKey:
        record = await self.get(key_id)
        if record is None:
            raise NotFound(f"no API key {key_id!r}")
        if not record.revoked:
            record = replace(record, revoked_at=when)
            await self._r.hset(self._keys, key_id, orjson.dumps(record.to_json()))
        return record

    async def used(self, key_id: str, when: float) -> None:
        await self._r.hset(self._used, key_id, repr(when))

    async def close(self) -> None:
        await self._r.aclose()


class ApiKeys:
    """The operator's keys over one book."""

    def __init__(self, book: KeyBook, clock: Callable[[], float] = time.time) -> None:
        self.book = book
        self._clock = clock
        self._used: dict[str, float] = {}  # id -> when this process last stored its use

    async def create(self, name: object) -> tuple[ApiKey, str]:
        """The new record and the key itself (shown once; never stored)."""
        key_id, secret, key = new_key()
        record = ApiKey(id=key_id, name=check_name(name), hash=digest(secret), created_at=self._clock())
        await self.book.add(record)
        return record, key

    async def list(self) -> list[ApiKey]:
        return await self.book.all()

    async def revoke(self, key_id: str) -> ApiKey:
        return await self.book.revoke(key_id, self._clock())

    async def verify(self, key: str) -> ApiKey:
        """The key's record if the key is valid; 401 ``invalid_api_key`` or ``revoked_api_key``."""
        parsed = parse(key)
        if parsed is None:
            raise InvalidApiKey("this is not an API key (amphi_<id>_<secret>)")
        key_id, secret = parsed
        record = await self.book.get(key_id)
        if not hmac.compare_digest(digest(secret), record.hash if record is not None else _DUMMY) or record is None:
            raise InvalidApiKey("no such API key")
        if record.revoked:
            raise RevokedApiKey(f"API key {key_id} ({record.name}) was revoked")
        now = self._clock()
        if now - self._used.get(key_id, record.last_used_at or 0.0) >= USED_EVERY_S:
            self._used[key_id] = now
            try:
                await self.book.used(key_id, now)
            except Exception as e:  # the last use is a note: a failure to write it refuses no one
                log.warning("could not note the use of API key %s: %s", key_id, e)
        return record

    async def close(self) -> None:
        await self.book.close()


def book_for(data_dir: Path, redis_url: str | None, prefix: str = "amphi:") -> KeyBook:
    """A cluster's keys are in its Redis; a node alone keeps them in its data directory."""
    return RedisKeyBook(redis_url, prefix) if redis_url else FileKeyBook(data_dir)
