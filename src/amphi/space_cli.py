"""``amphi space create|list|show|start|end``: Spaces from the command line, over a node's
JSON API (docs/api.md). Readable text by default, the API's own JSON with ``--json``.

Credentials go as ``Authorization: Bearer X``: ``--key`` (env AMPHI_API_KEY), an API key for
nodes that ask for one to create Spaces; ``--host-key`` (env AMPHI_HOST_KEY) for a Space's
start and end (``--key`` is sent there when no host key is given). An HTTP error prints the
server's message and exits 1; so does a node that cannot be reached.
"""

from __future__ import annotations

from typing import Any

import click
import httpx
import orjson

from amphi.web.routes import ROUTES

DEFAULT_SERVER = "http://127.0.0.1:8000"
TIMEOUT_S = 30.0
MAX_REDIRECTS = 3


def _server(f):  # type: ignore[no-untyped-def]
    f = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")(f)
    f = click.option("--key", envvar="AMPHI_API_KEY", default=None,
                     help="API key, sent as a bearer [env AMPHI_API_KEY].")(f)
    return click.option("--server", envvar="AMPHI_SERVER", default=DEFAULT_SERVER, show_default=True,
                        help="Base URL of the Amphi node [env AMPHI_SERVER].")(f)


def call(server: str, method: str, route: str, *, bearer: str | None = None, body: dict[str, Any] | None = None,
         **params: str) -> Any:
    """One API call: the answer's JSON; a click error (exit 1) for an HTTP error (the server's
    message) or a node that does not answer."""
    base = server.rstrip("/")
    url = base + ROUTES[route].path(**params)
    headers = {"authorization": f"Bearer {bearer}"} if bearer else {}
    try:
        r = httpx.request(method, url, headers=headers, json=body, timeout=TIMEOUT_S)
        for _ in range(MAX_REDIRECTS):  # 307: another node of the cluster hosts the Space; ask it, as it is
            if r.status_code not in (307, 308) or "location" not in r.headers:
                break
            r = httpx.request(method, r.url.join(r.headers["location"]), headers=headers, json=body,
                              timeout=TIMEOUT_S)
    except httpx.HTTPError as e:
        raise click.ClickException(f"cannot reach {base}: {e}") from None
    try:
        data = r.json()
    except ValueError:
        data = None
    if r.status_code >= 400:
        if isinstance(data, dict) and "message" in data:
            raise click.ClickException(f"{data['message']} ({r.status_code} {data.get('error', '')})".rstrip())
        raise click.ClickException(f"{method} {url}: HTTP {r.status_code}")
    if data is None:
        raise click.ClickException(f"{method} {url}: the answer is not JSON (HTTP {r.status_code})")
    return data


def _print_json(data: object) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _url(server: str, route: str, space_id: str) -> str:
    return server.rstrip("/") + ROUTES[route].path(id=space_id)


def _describe(s: dict[str, Any], server: str) -> None:
    click.echo(f"{s['id']}  {s['title']}")
    click.echo(f"  state:      {s['state']}" + (f" ({s['end_reason']})" if s.get("end_reason") else ""))
    for label, key in (("starts at", "starts_at"), ("started at", "started_at"), ("ended at", "ended_at")):
        if s.get(key):
            click.echo(f"  {label + ':':<11} {s[key]}")
    click.echo(f"  listeners:  {s['listeners']} (peak {s['peak_listeners']}), {s['waiting']} waiting")
    click.echo(f"  listen:     {s.get('listen_url') or _url(server, 'listener', s['id'])}")
    if s.get("replay"):
        click.echo(f"  replay:     {s['replay']}")


@click.group()
def space() -> None:
    """Create, list, show, start and end Spaces on a node."""


@space.command()
@click.option("--title", required=True, help="The Space's title.")
@click.option("--starts-at", default=None, metavar="ISO",
              help="When it goes live by itself: ISO 8601 with a zone, e.g. 2026-11-21T20:00:00Z.")
@click.option("--dead-air", default=None, type=float, metavar="S",
              help="Seconds of dead air before the hosts are alerted (default: the node's).")
@_server
def create(title: str, starts_at: str | None, dead_air: float | None, server: str, key: str | None,
           as_json: bool) -> None:
    """Create a Space: prints its id, host key, and the listener's and host console's URLs."""
    body: dict[str, Any] = {"title": title}
    if starts_at is not None:
        body["starts_at"] = starts_at
    if dead_air is not None:
        body["dead_air_s"] = dead_air
    s = call(server, "POST", "spaces.create", bearer=key, body=body)
    if as_json:
        _print_json(s)
        return
    click.echo(f"id:        {s['id']}")
    click.echo(f"host key:  {s['host_key']}   (shown once: keep it)")
    click.echo(f"listen:    {s.get('listen_url') or _url(server, 'listener', s['id'])}")
    click.echo(f"host:      {_url(server, 'host', s['id'])}")
    click.echo(f"state:     {s['state']}" + (f", starts at {s['starts_at']}" if s.get("starts_at") else ""))


@space.command(name="list")
@_server
def listing(server: str, key: str | None, as_json: bool) -> None:
    """Every Space on the node."""
    spaces = call(server, "GET", "spaces.list", bearer=key)
    if as_json:
        _print_json(spaces)
        return
    if not spaces:
        click.echo("no Spaces")
    for s in spaces:
        click.echo(f"{s['id']:<14} {s['state']:<10} {s['listeners']:>6} listening  {s['title']}")


@space.command()
@click.argument("space_id", metavar="SPACE")
@_server
def show(space_id: str, server: str, key: str | None, as_json: bool) -> None:
    """One Space's status."""
    s = call(server, "GET", "space", bearer=key, id=_checked(space_id))
    if as_json:
        _print_json(s)
    else:
        _describe(s, server)


def _lifecycle(action: str, verb: str):  # type: ignore[no-untyped-def]
    @click.argument("space_id", metavar="SPACE")
    @click.option("--host-key", envvar="AMPHI_HOST_KEY", default=None,
                  help="The Space's host key [env AMPHI_HOST_KEY]; else --key is sent.")
    @_server
    def command(space_id: str, host_key: str | None, server: str, key: str | None, as_json: bool) -> None:
        credential = host_key or key
        if not credential:
            raise click.UsageError("give --host-key (or AMPHI_HOST_KEY), or an API key with --key")
        s = call(server, "POST", f"space.{action}", bearer=credential, id=_checked(space_id))
        if as_json:
            _print_json(s)
        else:
            click.echo(f"{s['id']}: {s['state']}")
    command.__doc__ = f"{verb} a Space (its host key, or an API key)."
    return space.command(name=action)(command)


def _checked(space_id: str) -> str:
    try:
        ROUTES["space"].path(id=space_id)
    except ValueError:
        raise click.BadParameter(f"{space_id!r} is not a Space id", param_hint="SPACE") from None
    return space_id


start = _lifecycle("start", "Start")
end = _lifecycle("end", "End")


@click.command()
@click.argument("node_id", metavar="NODE")
@click.option("--key", envvar="AMPHI_OPERATOR_KEY", default=None,
              help="The operator key, sent as a bearer [env AMPHI_OPERATOR_KEY].")
@click.option("--server", envvar="AMPHI_SERVER", default=DEFAULT_SERVER, show_default=True,
              help="Any node of the cluster (or its entry) [env AMPHI_SERVER].")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
def drain(node_id: str, key: str | None, server: str, as_json: bool) -> None:
    """Hand every live Space node NODE hosts to its standby, with no gap, before maintenance
    (docs/cluster.md). Returns once each has moved; the node then stands by for no one."""
    data = call(server, "POST", "node.drain", bearer=key, node=node_id)
    if as_json:
        _print_json(data)
        return
    for moved in data["moved"]:
        click.echo(f"{moved['id']}  -> node {moved['to']}  after segment {moved['last_msn']}  in {moved['took_s']:.2f} s")
    for kept in data["kept"]:
        click.echo(f"{kept['id']}  kept: {kept['why']}")
    click.echo(f"node {data['node']}: {len(data['moved'])} Spaces handed over, {len(data['kept'])} kept")
