"""``amphi keys create|list|revoke``: the operator's API keys (docs/keys.md). A node alone keeps
them in ``DATA_DIR/api_keys.json`` (the same ``--data-dir`` as ``amphi serve``); a cluster in its
Redis (``--redis URL``, as the nodes are given). A running node sees a change within a request."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click

from amphi.control.apikeys import ApiKeys, book_for
from amphi.core.config import ClusterConfig
from amphi.core.errors import AmphiError

T = TypeVar("T")


def _where(f: Callable[..., None]) -> Callable[..., None]:
    f = click.option("--redis", "redis_url", default=None, metavar="URL",
                     help="A cluster's keys: the Redis its nodes share (as `amphi serve --redis`).")(f)
    return click.option("--data-dir", default="data", show_default=True, type=click.Path(path_type=Path),
                        help="A node's keys: its data directory (as `amphi serve --data-dir`).")(f)


def _run(data_dir: Path, redis_url: str | None, work: Callable[[ApiKeys], Awaitable[T]]) -> T:
    async def go() -> T:
        keys = ApiKeys(book_for(data_dir, redis_url, ClusterConfig.prefix))
        try:
            return await work(keys)
        finally:
            await keys.close()
    try:
        return asyncio.run(go())
    except AmphiError as e:
        raise click.ClickException(e.message) from None
    except OSError as e:
        raise click.ClickException(str(e)) from None


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t is not None else "-"


@click.group()
def keys() -> None:
    """API keys: who may create Spaces and manage any Space (docs/keys.md)."""


@keys.command()
@click.option("--name", required=True, help="Who or what the key is for (shown by `list`).")
@_where
def create(name: str, data_dir: Path, redis_url: str | None) -> None:
    """Make a key and print it, once: only its hash is kept."""
    record, key = _run(data_dir, redis_url, lambda k: k.create(name))
    click.echo(key)
    click.echo(f"amphi keys: made key {record.id} ({record.name}); it is shown only this once: keep it. "
               f"Send it as Authorization: Bearer KEY", err=True)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of the keys (never their secrets).")
@_where
def list_keys(as_json: bool, data_dir: Path, redis_url: str | None) -> None:
    """The keys: id, name, created, last used (to the minute), revoked."""
    records = _run(data_dir, redis_url, lambda k: k.list())
    if as_json:
        click.echo(json.dumps([r.public() for r in records], indent=1))
        return
    click.echo(f"{'ID':12}  {'NAME':20}  {'CREATED':19}  {'LAST USED':19}  REVOKED")
    for r in records:
        click.echo(f"{r.id:12}  {r.name[:20]:20}  {_when(r.created_at):19}  {_when(r.last_used_at):19}  "
                   f"{_when(r.revoked_at) if r.revoked else 'no'}")


@keys.command()
@click.argument("key_id", metavar="ID")
@_where
def revoke(key_id: str, data_dir: Path, redis_url: str | None) -> None:
    """Revoke a key: every node refuses it from its next request on (401 revoked_api_key)."""
    record = _run(data_dir, redis_url, lambda k: k.revoke(key_id))
    click.echo(f"amphi keys: revoked {record.id} ({record.name})")
