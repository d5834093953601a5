"""The key registry (amphi.control.apikeys) over both books: a file in the data dir, and a real
Redis; and the GCRA table's look that charges nothing (the failed-attempt limit's first step)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import stat

import orjson
import pytest

from amphi.control import apikeys
from amphi.control.apikeys import ApiKeys, FileKeyBook, RedisKeyBook, parse
from amphi.core.errors import InvalidApiKey, MalformedBody, NotFound, RevokedApiKey
from amphi.core.gcra import GcraTable


def run(coro):
    return asyncio.run(coro)


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def test_a_key_is_shown_once_and_only_its_hash_is_stored(tmp_path) -> None:
    keys = ApiKeys(FileKeyBook(tmp_path))
    record, key = run(keys.create("  ci robot "))
    key_id, secret = parse(key)
    assert key.startswith("amphi_") and key_id == record.id and len(secret) == 43
    assert record.name == "ci robot" and not record.revoked
    assert record.hash == hashlib.sha256(secret.encode()).hexdigest()
    raw = (tmp_path / "api_keys.json").read_bytes()
    assert secret.encode() not in raw and key.encode() not in raw  # never the key itself
    assert stat.S_IMODE(os.stat(tmp_path / "api_keys.json").st_mode) == 0o600
    assert [k.id for k in run(keys.list())] == [record.id]
    assert "hash" not in record.public()


def test_verify_accepts_the_key_and_refuses_others(tmp_path) -> None:
    keys = ApiKeys(FileKeyBook(tmp_path))
    record, key = run(keys.create("a"))
    assert run(keys.verify(key)).id == record.id
    key_id, secret = parse(key)
    wrong_secret = f"amphi_{key_id}_{'A' * 43}"
    unknown_id = f"amphi_{'0' * 12}_{secret}"
    for bad in (wrong_secret, unknown_id, "amphi_nope", key + "x", "Bearer " + key):
        with pytest.raises(InvalidApiKey):
            run(keys.verify(bad))
    with pytest.raises(MalformedBody):
        run(keys.create(""))


def test_the_secret_is_checked_in_constant_time(tmp_path, monkeypatch) -> None:
    """Known id with a wrong secret, and an unknown id: both go through hmac.compare_digest of two
    SHA-256 digests, never ``==`` on the secret."""
    keys = ApiKeys(FileKeyBook(tmp_path))
    _, key = run(keys.create("a"))
    key_id, _ = parse(key)
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a, b):  # the real comparison, recorded
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(apikeys.hmac, "compare_digest", spy)
    for bad in (f"amphi_{key_id}_{'A' * 43}", f"amphi_{'0' * 12}_{'A' * 43}"):
        with pytest.raises(InvalidApiKey):
            run(keys.verify(bad))
    run(keys.verify(key))
    assert len(compared) == 3 and all(len(a) == len(b) == 64 for a, b in compared)


def test_revoke_and_last_use(tmp_path) -> None:
    clock = Clock()
    keys = ApiKeys(FileKeyBook(tmp_path), clock)
    record, key = run(keys.create("a"))
    run(keys.verify(key))
    assert run(keys.list())[0].last_used_at == clock.t
    clock.t += 10
    run(keys.verify(key))
    assert run(keys.list())[0].last_used_at == clock.t - 10  # stored to the minute, not on every use
    clock.t += apikeys.USED_EVERY_S
    run(keys.verify(key))
    assert run(keys.list())[0].last_used_at == clock.t
    revoked = run(keys.revoke(record.id))
    assert revoked.revoked and revoked.revoked_at == clock.t
    with pytest.raises(RevokedApiKey):
        run(keys.verify(key))
    with pytest.raises(NotFound):
        run(keys.revoke("000000000000"))


def test_a_node_sees_a_revocation_made_by_another_process(tmp_path) -> None:
    """The node's book re-reads the file when it changed on disk (``amphi keys revoke`` writes it)."""
    node = ApiKeys(FileKeyBook(tmp_path))
    cli = ApiKeys(FileKeyBook(tmp_path))
    record, key = run(cli.create("a"))
    assert run(node.verify(key)).id == record.id
    run(cli.revoke(record.id))
    with pytest.raises(RevokedApiKey):
        run(node.verify(key))
    _, second = run(cli.create("b"))
    assert run(node.verify(second)).name == "b"
    data = orjson.loads((tmp_path / "api_keys.json").read_bytes())
    assert [k["name"] for k in data["keys"]] == ["a", "b"]  # the node's last-use write lost nothing


def test_the_redis_book(redis_server) -> None:
    async def scenario() -> None:
        keys = ApiKeys(RedisKeyBook(redis_server.url, "t:"))
        other = ApiKeys(RedisKeyBook(redis_server.url, "t:"))
        try:
            record, key = await keys.create("cluster")
            assert (await other.verify(key)).id == record.id
            listed = await keys.list()
            assert [k.id for k in listed] == [record.id] and listed[0].last_used_at is not None
            await keys.revoke(record.id)
            with pytest.raises(RevokedApiKey):
                await other.verify(key)
            with pytest.raises(NotFound):
                await keys.revoke("000000000000")
        finally:
            await keys.close()
            await other.close()

    run(scenario())
    import redis

    r = redis.Redis.from_url(redis_server.url)
    stored = r.hgetall("t:api_keys")
    assert len(stored) == 1 and b"amphi_" not in next(iter(stored.values()))
    r.close()


def test_gcra_table_wait_charges_nothing() -> None:
    table = GcraTable(4)
    assert table.wait("a", 1.0, 2, 100.0) == 0.0 and len(table) == 0
    assert table.charge("a", 1.0, 2, 100.0) == 0.0
    assert table.charge("a", 1.0, 2, 100.0) == 0.0
    assert table.wait("a", 1.0, 2, 100.0) == pytest.approx(1.0)
    assert table.wait("a", 1.0, 2, 100.0) == pytest.approx(1.0)  # looking twice costs nothing
    assert table.wait("a", 1.0, 2, 101.0) == 0.0
