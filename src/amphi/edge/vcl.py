"""Renders an edge's VCL (pure). What the edge does, in request order (docs/edge.md):

1. Media (``/o/<node>/media/<space>/t/<token>/<file>``): a per-address request rate
   (vsthrottle), then the admission token is verified right there, one HMAC-SHA256 with the
   cluster's secret (vmod digest) and a clock read: missing/malformed/forged -> 403, expired ->
   401, nothing asked of the origin. An expired token on a live playlist is the one exception:
   it is passed to the origin, which knows whether the seat is still held and answers a 307
   to a renewed token (players that only follow URLs, such as ffmpeg, renew that way).
2. The token is then dropped from the URL: every listener of a Space shares one cache object
   per file (``/media/<space>/edge/<file>``, fetched with this edge's credential). Concurrent
   misses wait on Varnish's waiting list for the one fetch in flight, blocking playlist reloads
   and preload-hinted parts included, and are woken the moment it lands.
   A segment still being made is streamed (the origin sends each part as it is made): the one
   fetch reaches every waiting listener as it arrives. Varnish answers any Range on such an
   object with the whole body, so a Range that is not "from byte 0 to the end" (a part's
   bytes, as hls.js asks) is an object of its own, fetched from the origin with that Range.
3. The live playlist is kept 0.1 s (a blocking reload's answer for its max-age), so a new
   listener starts at the live edge; stale copies are served only while the origin fails its
   health probes, for a few seconds. Errors are kept 0.5 s.
4. ``/api/`` and pages go to the API nodes, round-robin, health-probed; joins have their own
   per-address rate. Static assets are cached.
5. A Space outlives its host (docs/edge.md, "When a node dies"): media is fetched from the
   Space's host, which need not be the URL's node. The URL's node, or the host this edge last
   heard of for the Space; if that one is down (its probe), another healthy origin; a fetch that
   fails to connect is retried on another; a ``421`` naming the host (``x-amphi-host``) is
   retried there and remembered; a ``503`` with ``Retry-After`` (a take-over) is retried on an
   origin not asked yet. Each node is asked at most once a request; a ``421`` never reaches a
   client nor the cache (503 + ``Retry-After: 1`` when nobody serves).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from amphi.control.tokens import TOKEN, Signer
from amphi.core.config import AdmissionConfig
from amphi.web.asgi import EXPOSE, PREFLIGHT_HEADERS, PREFLIGHT_MAX_AGE
from amphi.web.routes import PLACES, ROUTES

NAME = re.compile(f"^{PLACES['node'].grammar}$")
QUERY = r"(?:\?[A-Za-z0-9_=&-]{0,64})?"  # the query a media URL may carry (blocking reloads: _HLS_msn, _HLS_part)
# the edge's media routes, from the node's one route table (amphi.web.routes)
REPLAY = ROUTES.edge_regex([r.name for r in ROUTES.named("bare.") if r.public_once_ended], "vcl", node=True)
MEDIA = ROUTES.edge_regex([r.name for r in ROUTES.named("media.")], "vcl", node=True, query=QUERY)
JOIN = ROUTES["join"].pattern("vcl", query=r"(\?.*)?")
LINE = ROUTES["line"].pattern("vcl", query=r"(\?.*)?")  # the line document: cached, one fetch a second
SEGMENT = ROUTES["media.segment"].pattern("vcl", node=True, query=QUERY)  # a whole segment, streamed while open
# a Range from byte 0 to the end, however the player says it ("0-", Shaka Player's "0-9007199254740991"; the
# origin reads a last byte >= 2**32 as the end): the whole segment, streamed while it is made
WHOLE_RANGE = r"^bytes=0-([0-9]{11,})?$"
TOKEN_RE = TOKEN.numbered()
EXPOSE_HEADERS = EXPOSE[1].decode()  # as the origin's answers
CONNECTION_CAPS = ("auto", "fanout", "firewall", "nginx")
MEDIA_RETRIES = 3  # a media fetch goes to at most 4 nodes (Varnish's max_retries is 4): a node is never asked twice
HOST_KEY = '"amphi-host:" + '  # the var vmod's global, per Space: "<node> <unix time it was last confirmed>"


@dataclass(frozen=True)
class Backend:
    name: str
    host: str
    port: int

    @classmethod
    def parse(cls, name: str, url: str) -> Backend:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"{url!r}: an origin or API node is http://HOST:PORT")
        if not NAME.match(name):
            raise ValueError(f"{name!r}: a node's name is 1-32 letters, digits, '_' or '-'")
        return cls(name, parts.hostname, parts.port or 80)


@dataclass(frozen=True)
class EdgeSpec:
    """One edge's configuration. Rates are per client address, per second; 0 turns one off."""

    name: str  # this edge's name, in its credential and its logs
    credential: str  # what it shows the origin: Signer.edge_credential(name)
    secret: str  # the cluster's token key, to verify listeners' tokens
    origins: tuple[Backend, ...]  # media, routed by /o/<node>/
    api: tuple[Backend, ...] = ()  # API nodes for /api/ and pages; default: the origins
    media_rate: int = 200  # media requests per address per second (a NAT of ~50 listeners)
    join_rate: int = 20  # joins per address per second
    batch_joins: bool = True  # the fan-out sends joins to the API nodes in batches (edge/joins.py); off: one each
    max_connections_per_address: int = 256  # TCP connections one address may hold (nginx in front, edge/varnish.py;
    # 0: no cap, no nginx). A browser holds about 6; 256 is a NAT of some 40 listeners
    connection_cap: str = "auto"  # who enforces it (CONNECTION_CAPS): "fanout" (and "auto"), the fan-out's
    # workers, each address's connections steered to one of them (edge/fanout.py); "firewall", the kernel
    # (iptables connlimit, edge/firewall.py: root only, and connection tracking on); "nginx", its stream
    # module in front (one more hop a request)
    stale_playlist_s: float = 8.0  # a playlist is served stale this long once the origin stops answering probes
    live_playlist_ttl_s: float = 0.1  # the non-blocking live playlist: a new listener starts this close to live
    media_ttl_cap_s: int = 120  # parts and segments are immutable, but only wanted near the live edge
    error_ttl_s: float = 0.5  # errors from the origin are kept this long
    probe_interval_s: float = 0.5  # origins and API nodes are probed this often (GET /api/node), a probe
    # timing out after 0.8 of it; two failures of the last three mark a node down: 0.5-1 s after its port
    # refuses, 0.9-1.8 s after it stops answering (SIGSTOP). A refused fetch moves on at once, without it
    host_memory_s: int = 30  # a Space's host learned from a 421 is used this long after it last answered
    token_ttl_s: float = AdmissionConfig.token_ttl_s  # the nodes' --token-ttl: the fan-out renews tokens at half of it

    @classmethod
    def signed(cls, name: str, secret: str, origins: tuple[Backend, ...], **options: object) -> EdgeSpec:
        """An edge of the cluster whose nodes share ``secret``: its credential is made with it."""
        return cls(name=name, credential=Signer(secret.encode()).edge_credential(name), secret=secret,
                   origins=origins, **options)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise ValueError(f"{self.name!r}: an edge's name is 1-32 letters, digits, '_' or '-'")
        if not self.origins:
            raise ValueError("an edge needs at least one origin")
        if not re.fullmatch(r"[\x21-\x7e]{16,256}", self.secret) or '"}' in self.secret:
            raise ValueError("the token secret must be 16-256 printable characters (as in <data_dir>/secret)")
        if self.probe_interval_s <= 0 or self.host_memory_s <= 0:
            raise ValueError("the probe interval and the host memory are positive")
        if self.connection_cap not in CONNECTION_CAPS:
            raise ValueError(f"{self.connection_cap!r}: the connection cap is one of {', '.join(CONNECTION_CAPS)}")


def _backend(prefix: str, b: Backend, spec: EdgeSpec, *, probe: bool) -> str:
    lines = [
        f"backend {prefix}{b.name.replace('-', '_')} {{",
        f'    .host = "{b.host}";',
        f'    .port = "{b.port}";',
        "    .connect_timeout = 1s;",
        # the origin holds a request for media that will come at most a segment and then
        # MediaConfig.hold_s (1.5 segments, at least 6 s): 9.6 s with 3.584 s segments, 20 s with 8 s
        "    .first_byte_timeout = 25s;",
        "    .between_bytes_timeout = 5s;",  # a streamed segment's parts come every 0.512 s
    ]
    if probe:
        lines += [
            "    .probe = {",
            '        .url = "/api/node";',
            f"        .interval = {spec.probe_interval_s:g}s;",
            # the next probe is due an interval after one ends: a node that stopped answering is
            # probed every interval + timeout, and down after two of them
            f"        .timeout = {min(0.8 * spec.probe_interval_s, 1.0):g}s;",
            "        .window = 3;",
            "        .threshold = 2;",
            "        .initial = 2;",
            "    }",
        ]
    return "\n".join([*lines, "}"])


def _ident(b: Backend) -> str:
    return f"o_{b.name.replace('-', '_')}"


def _chain(clauses: list[str], otherwise: str) -> str:
    """``if (c1) { a1 } elsif ... else { otherwise }`` from (condition, action) lines, indented once."""
    out = [f"    {'if' if i == 0 else '} elsif'} {c}" for i, c in enumerate(clauses)]
    return "\n".join([*out, f"    }} else {{\n        {otherwise}\n    }}"])


def _routing(spec: EdgeSpec) -> str:
    """The subs that turn a node's name into its backend and choose the next node to ask
    (one clause per origin: VCL has no lookup by name, nor a regex made at run time)."""
    o = spec.origins
    hint = _chain([f'(req.http.x-amphi-to == "{b.name}") {{\n        set req.backend_hint = {_ident(b)};' for b in o],
                  'return (synth(404, "not_found: no such origin node"));')
    fetch = _chain([f'(bereq.http.x-amphi-to == "{b.name}") {{\n        set bereq.backend = {_ident(b)};' for b in o],
                   "set bereq.backend = " + _ident(o[0]) + ";  # not reached: x-amphi-to is always an origin's")
    other = {
        side: _chain([f'({side}.http.x-amphi-tried !~ ",{b.name}," && std.healthy({_ident(b)})) {{\n'
                      f'        set {side}.http.x-amphi-to = "{b.name}";' for b in o],
                     f"unset {side}.http.x-amphi-to;")
        for side in ("req", "bereq")}
    named = _chain([f'(beresp.http.x-amphi-host == "{b.name}" && bereq.http.x-amphi-tried !~ ",{b.name},") {{\n'
                    f'        set bereq.http.x-amphi-to = "{b.name}";' for b in o],
                   "unset bereq.http.x-amphi-to;")
    return f"""sub amphi_hint {{
{hint}
}}

sub amphi_fetch_from {{
{fetch}
}}

sub amphi_other_req {{
    # the first healthy origin not tried yet; none: x-amphi-to unset
{other["req"]}
}}

sub amphi_other {{
{other["bereq"]}
}}

sub amphi_named {{
    # the host a 421 names, if it is an origin of this edge not asked yet; else x-amphi-to unset
{named}
}}"""


def render(spec: EdgeSpec) -> str:
    api = spec.api or spec.origins
    backends = "\n\n".join(
        [_backend("o_", b, spec, probe=True) for b in spec.origins]
        + [_backend("a_", b, spec, probe=True) for b in api]
    )
    api_adds = "\n".join(f"    api.add_backend(a_{b.name.replace('-', '_')});" for b in api)
    routing = _routing(spec)
    host = HOST_KEY + "regsub(bereq.url, \"^/media/([^/]+)/.*$\", \"\\1\")"  # the Space's entry, fetch side
    # behind the front (nginx, with the connection cap) every request comes over its Unix socket:
    # the client's address is the one the front always sets (from its connection, or from the
    # PROXY protocol behind the stream cap)
    client = 'req.http.x-amphi-client' if spec.max_connections_per_address else 'client.ip'
    media_throttle = (
        f'    if (vsthrottle.is_denied("m" + {client}, {spec.media_rate}, 1s)) {{\n'
        '        return (synth(429, "too_many_requests: slow down"));\n    }'
        if spec.media_rate else "")
    join_throttle = (
        f'    if (req.url ~ "{JOIN}" && vsthrottle.is_denied("j" + {client}, {spec.join_rate}, 1s)) {{\n'
        '        return (synth(429, "too_many_requests: too many joins from this address"));\n    }'
        if spec.join_rate else "")
    front_client = (
        '    if (!req.http.x-amphi-client) {\n'
        '        return (synth(400, "bad_request: not through the edge\'s front"));\n'
        '    }\n'
        '    set req.http.x-forwarded-for = req.http.x-amphi-forwarded-for;  # as the front saw it\n'
        '    unset req.http.x-amphi-forwarded-for;\n'
        if spec.max_connections_per_address else '    unset req.http.x-amphi-client;\n')
    mac = ('digest.base64url_nopad_hex(regsub(digest.hmac_sha256({"' + spec.secret + '"}, '
           '"token|" + req.http.x-space + "|" + req.http.x-claims), "^0x(.{32}).*$", "\\1"))')
    return f"""vcl 4.1;
# Amphi edge "{spec.name}", rendered by `amphi edge config`: do not edit, render again.
# It holds the cluster's token secret: keep it private (mode 0600).

import digest;
import directors;
import std;
import var;
import vsthrottle;

{backends}

sub vcl_init {{
    new api = directors.round_robin();
{api_adds}
}}

sub vcl_recv {{
{front_client}    unset req.http.x-node;
    unset req.http.x-space;
    unset req.http.x-claims;
    unset req.http.x-token;
    unset req.http.x-file;
    unset req.http.x-range;
    unset req.http.x-amphi-to;
    unset req.http.x-amphi-tried;
    unset req.http.x-amphi-gave-up;
    unset req.http.x-amphi-first;
    unset req.http.x-amphi-known;
    if (req.url ~ "^/o/") {{
        call amphi_media;
    }}
{join_throttle}
    set req.backend_hint = api.backend();
    if (!std.healthy(req.backend_hint)) {{
        return (synth(503, "unavailable: no API node is up"));
    }}
    if ((req.method == "GET" || req.method == "HEAD") && req.url ~ "^/static/") {{
        unset req.http.cookie;
        return (hash);
    }}
    if ((req.method == "GET" || req.method == "HEAD") && req.url ~ "{LINE}") {{
        # a Space's line document (docs/admission.md): every waiting client of this edge
        # shares one copy, fetched once a second at most; a query cannot split it
        set req.url = regsub(req.url, "\\?.*$", "");
        unset req.http.cookie;
        unset req.http.authorization;
        return (hash);
    }}
    if (req.method == "POST") {{
        std.cache_req_body(64KB);  # so a POST can be retried on another API node
    }}
    return (pass);
}}

sub amphi_media {{
    if (req.method == "OPTIONS") {{
        return (synth(204, "preflight"));  # a page on another origin may play media (CORS)
    }}
    if (req.method != "GET" && req.method != "HEAD") {{
        return (synth(405, "method_not_allowed: media is read with GET or HEAD"));
    }}
{media_throttle}
    set req.http.x-node = regsub(req.url, "^/o/([^/]+)/.*$", "\\1");
    set req.http.x-space = regsub(req.url, "^/o/[^/]+/media/([^/]+)/.*$", "\\1");
    if (req.url ~ "{REPLAY.text}") {{
        # the replay: public once the Space has ended (the origin says 401 before), cached
        call amphi_route;
        set req.url = regsub(req.url, "^/o/[^/]+", "");
        return (hash);
    }}
    if (req.url ~ "^/o/[^/]+/media/[^/]+/[^/]+$") {{
        return (synth(401, "unauthorized: an admission token is required: POST /api/spaces/{{id}}/join"));
    }}
    if (req.url !~ "{MEDIA.text}") {{
        return (synth(404, "not_found: no such media path"));
    }}
    set req.http.x-space = regsub(req.url, "{MEDIA.text}", "\\{MEDIA.group("id")}");
    set req.http.x-token = regsub(req.url, "{MEDIA.text}", "\\{MEDIA.group("token")}");
    set req.http.x-file = regsub(req.url, "{MEDIA.text}", "\\{MEDIA.group("file")}\\{MEDIA.group("query")}");
    if (req.http.x-token !~ "{TOKEN_RE}") {{
        return (synth(403, "forbidden: malformed admission token"));
    }}
    set req.http.x-claims = regsub(req.http.x-token, "{TOKEN_RE}", "\\{TOKEN.group("body")}");
    if ({mac} != regsub(req.http.x-token, "{TOKEN_RE}", "\\{TOKEN.group("mac")}")) {{
        return (synth(403, "forbidden: this admission token is not valid for this Space"));
    }}
    call amphi_route;
    if (std.integer(regsub(req.http.x-token, "{TOKEN_RE}", "\\{TOKEN.group("expires")}"), 0) <= std.integer(time=now)) {{
        if (req.http.x-file ~ "^live\\.m3u8") {{
            # the origin knows whether the seat is still held: a 307 to a renewed token, or 401
            set req.url = "/media/" + req.http.x-space + "/t/" + req.http.x-token + "/" + req.http.x-file;
            unset req.http.x-token;
            unset req.http.x-file;
            return (pass);
        }}
        return (synth(401, "token_expired: the admission token has expired: join again"));
    }}
    if (std.healthy(req.backend_hint)) {{
        set req.grace = 0s;  # stale copies only while the origin is down: fresh ones start listeners at the live edge
    }}
    if (req.http.range && req.url ~ "{SEGMENT}" && req.http.range !~ "{WHOLE_RANGE}") {{
        # Varnish answers any Range on an object still arriving with a 200 and the whole body:
        # right for "to the end" from byte 0 (the streamed segment), wrong for a part's bytes
        # (hls.js asks a-b for each). Those are their own objects, one per range, fetched with
        # it: the origin answers once byte b exists (206 a-b/*), every waiter shares the answer
        set req.http.x-range = req.http.range;
        unset req.http.range;
    }}
    set req.url = "/media/" + req.http.x-space + "/edge/" + req.http.x-file;
    unset req.http.x-token;
    unset req.http.x-file;
    unset req.http.cookie;
    unset req.http.authorization;
    return (hash);
}}

sub amphi_route {{
    # the URL's node; or the Space's host as a 421 named it, while it keeps answering
    set req.http.x-amphi-to = req.http.x-node;
    call amphi_hint;  # 404 for a node this edge does not know
    set req.http.x-amphi-known = var.global_get({HOST_KEY}req.http.x-space);
    if (req.http.x-amphi-known ~ "^[^ ]+ [0-9]+$" &&
            std.integer(regsub(req.http.x-amphi-known, "^.* ", ""), 0) + {spec.host_memory_s} > std.integer(time=now)) {{
        set req.http.x-amphi-to = regsub(req.http.x-amphi-known, " .*$", "");
        call amphi_hint;
    }}
    unset req.http.x-amphi-known;
    set req.http.x-amphi-tried = ",";
    if (!std.healthy(req.backend_hint)) {{
        # down by its probe: any other healthy origin (one that is not the host says which is);
        # none: the first choice all the same (a stale copy, or a 503)
        set req.http.x-amphi-tried = "," + req.http.x-amphi-to + ",";
        set req.http.x-amphi-first = req.http.x-amphi-to;
        call amphi_other_req;
        if (!req.http.x-amphi-to) {{
            set req.http.x-amphi-to = req.http.x-amphi-first;
            set req.http.x-amphi-tried = ",";
        }}
        unset req.http.x-amphi-first;
        call amphi_hint;
    }}
}}

{routing}

sub amphi_host_answered {{
    # the node asked is the Space's host: remembered when it is not the URL's, so that this
    # Space's next fetches go straight to it
    if (bereq.http.x-amphi-to != bereq.http.x-node) {{
        var.global_set({host}, bereq.http.x-amphi-to + " " + std.integer(time=now));
    }}
}}

sub amphi_not_host {{
    # the node asked does not serve the Space (a 421, a 503, no answer): never asked again for
    # this request, and forgotten as the Space's host
    set bereq.http.x-amphi-tried = bereq.http.x-amphi-tried + bereq.http.x-amphi-to + ",";
    if (regsub(var.global_get({host}), " .*$", "") == bereq.http.x-amphi-to) {{
        var.global_set({host}, "");
    }}
}}

sub vcl_hash {{
    # media by (space, file) alone: whichever node serves them, a Space's files are the same
    # bytes (the new host continues the old one's numbers, and holds copies of its segments)
    hash_data(req.url);
    if (req.http.x-range) {{
        hash_data(req.http.x-range);
    }}
    return (lookup);
}}

sub vcl_backend_fetch {{
    if (bereq.url ~ "^/media/") {{
        call amphi_fetch_from;
    }}
    if (bereq.url ~ "^/media/[^/]+/edge/") {{
        set bereq.http.x-amphi-edge = "{spec.credential}";
    }}
    if (bereq.http.x-range) {{
        set bereq.http.range = bereq.http.x-range;  # Varnish drops a client's Range from a cache fetch
        unset bereq.http.x-range;
    }}
}}

sub vcl_backend_response {{
    if (bereq.url ~ "^/media/") {{
        if (beresp.status == 421) {{
            # not the Space's host: ask the one it names, else another origin not asked yet;
            # a 421 never reaches a client nor the cache
            call amphi_not_host;
            call amphi_named;
            if (bereq.http.x-amphi-to) {{
                var.global_set({host}, bereq.http.x-amphi-to + " " + std.integer(time=now));
            }} else {{
                call amphi_other;
            }}
            if (bereq.http.x-amphi-to && bereq.retries < {MEDIA_RETRIES}) {{
                return (retry);
            }}
            if (bereq.is_bgfetch) {{
                return (abandon);  # keep serving the stale playlist
            }}
            set bereq.http.x-amphi-gave-up = "1";
            return (error(503, "Service Unavailable"));
        }}
        if (beresp.status == 503 && beresp.http.retry-after) {{
            # a take-over under way (or a busy node): another origin not asked yet, if any;
            # else this 503 goes to the client, kept no longer than other errors
            call amphi_not_host;
            call amphi_other;
            if (bereq.http.x-amphi-to && bereq.retries < {MEDIA_RETRIES}) {{
                return (retry);
            }}
        }} elsif (beresp.status < 400) {{
            call amphi_host_answered;  # not a 404: a node that knows nothing of the Space is not its host
        }}
        if (beresp.http.content-range) {{
            # a part's bytes (x-range, above): Varnish refuses to keep an answer with a
            # Content-Range ("Unexpected content-range header"), so it is kept under another name
            set beresp.http.x-amphi-content-range = beresp.http.content-range;
            unset beresp.http.content-range;
        }}
        if (beresp.status == 307 && beresp.http.location ~ "^/media/") {{
            set beresp.http.location = "/o/" + bereq.http.x-node + beresp.http.location;
        }}
        if (beresp.status >= 500 && bereq.is_bgfetch) {{
            return (abandon);  # keep serving the stale playlist
        }}
        if (beresp.status >= 400) {{
            set beresp.ttl = {spec.error_ttl_s:g}s;  # kept, never for long: waiters share it
            set beresp.grace = 0s;
        }} elsif (bereq.url ~ "/live\\.m3u8$") {{
            set beresp.ttl = {spec.live_playlist_ttl_s:g}s;  # coalesced all the same: <= 1/ttl fetches a second
            set beresp.grace = {spec.stale_playlist_s:g}s;
        }} elsif (bereq.url ~ "\\.m3u8") {{
            set beresp.grace = {spec.stale_playlist_s:g}s;
        }} elsif (beresp.ttl > {spec.media_ttl_cap_s}s || beresp.status == 206) {{
            # 206: a part's bytes of a segment (x-range), as immutable; Varnish gives a 206 no TTL of its own
            set beresp.ttl = {spec.media_ttl_cap_s}s;
            set beresp.grace = 0s;
        }}
        return (deliver);
    }}
    if (bereq.retries < 2 && beresp.status >= 502 && bereq.method != "POST") {{
        return (retry);
    }}
}}

sub vcl_backend_error {{
    if (bereq.url !~ "^/media/") {{
        if (bereq.retries < 2) {{
            return (retry);  # another API node, round-robin
        }}
    }} else {{
        if (!bereq.http.x-amphi-gave-up) {{
            # no answer (refused, reset, timed out, or down by its probe): another origin not asked yet
            call amphi_not_host;
            call amphi_other;
            if (bereq.http.x-amphi-to && bereq.retries < {MEDIA_RETRIES}) {{
                return (retry);
            }}
        }}
        if (bereq.is_bgfetch) {{
            return (abandon);  # keep serving the stale playlist
        }}
    }}
    set beresp.ttl = {spec.error_ttl_s:g}s;
    set beresp.grace = 0s;
    set beresp.http.content-type = "application/json";
    set beresp.http.cache-control = "no-store";
    set beresp.http.retry-after = "1";
    set beresp.http.access-control-allow-origin = "*";
    synthetic({{"{{"error": "unavailable", "message": "the origin did not answer" }}"}});
    return (deliver);
}}

sub vcl_deliver {{
    set resp.http.x-edge = "{spec.name}";
    if (resp.http.x-amphi-content-range) {{
        set resp.http.content-range = resp.http.x-amphi-content-range;
        unset resp.http.x-amphi-content-range;
    }}
    if (obj.hits > 0) {{
        set resp.http.x-cache = "hit";
    }} else {{
        set resp.http.x-cache = "miss";
    }}
    unset resp.http.via;
    unset resp.http.x-varnish;
}}

sub vcl_synth {{
    set resp.http.access-control-allow-origin = "*";
    set resp.http.x-edge = "{spec.name}";
    if (resp.status == 204) {{
        # a CORS preflight for media, answered as the origin answers it
        set resp.http.access-control-allow-methods = "GET, HEAD, OPTIONS";
        set resp.http.access-control-allow-headers = "{PREFLIGHT_HEADERS.decode()}";
        set resp.http.access-control-max-age = "{PREFLIGHT_MAX_AGE.decode()}";
        set resp.http.cache-control = "public, max-age={PREFLIGHT_MAX_AGE.decode()}";
        set resp.reason = "No Content";
        return (deliver);
    }}
    set resp.http.content-type = "application/json";
    set resp.http.cache-control = "no-store";
    set resp.http.access-control-expose-headers = "{EXPOSE_HEADERS}";
    if (resp.status == 429) {{
        set resp.http.retry-after = "1";
    }}
    if (resp.status == 503) {{
        set resp.http.retry-after = "2";
    }}
    set resp.http.x-code = regsub(resp.reason, ":.*$", "");
    set resp.http.x-message = regsub(resp.reason, "^[^:]*: ", "");
    set resp.reason = "Amphi edge";
    synthetic({{"{{"error": ""}} + resp.http.x-code + {{"", "message": ""}} + resp.http.x-message + {{"" }}"}});
    unset resp.http.x-code;
    unset resp.http.x-message;
    return (deliver);
}}
"""
