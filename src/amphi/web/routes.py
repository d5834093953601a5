"""Every URL the node serves, in one table (pure: no framework, no I/O).

A ``Route`` is a template (``/media/{id}/t/{token}/{msn}.{part}.m4s``), the methods it takes,
the family of handler that answers it (``kind``) and what the edge needs to know. Each
placeholder has one grammar (``PLACES``), so a template compiles once into a regex that
dispatches, builds URLs (``Route.path``) and labels metrics (``RouteTable.label``: the
template, never the raw path), and into the edge's patterns: Varnish's VCL and nginx's
``location`` (``RouteTable.edge_regex``), optionally under the edge's ``/o/{node}`` prefix.

Media routes come in three families, one per way in:

    media.<file>   /media/{id}/t/{token}/<file>   a listener's admission token in the path
    edge.<file>    /media/{id}/edge/<file>        an edge cache, with its credential (x-amphi-edge)
    bare.<file>    /media/{id}/<file>             public once the Space has ended (``public_once_ended``);
                                                  else 401: a token is needed

for the files index.m3u8 (the multivariant playlist), live.m3u8, vod.m3u8, init.mp4, download.m4a, {msn}.{part}.m4s (a part) and
{msn}.m4s (a segment).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

FLAVORS = ("python", "vcl", "nginx")
MEMO_SIZE = 4096  # remembered matches (paths of Spaces' joins, events and API calls); cleared when full


@dataclass(frozen=True)
class Place:
    """A placeholder's grammar: regex text without groups, valid in Python and PCRE."""

    grammar: str
    capture: str  # its name at the edge (nginx: $amphi_<capture>)
    type: type = str  # what ``match`` gives: str or int


PLACES: dict[str, Place] = {
    "id": Place(r"[A-Za-z0-9_-]{1,64}", "space"),  # a Space
    # anything token-sized: a malformed token is the Signer's 403, not a 404; the edge checks
    # it against TOKEN.pattern itself
    "token": Place(r"[^/]{1,128}", "token"),
    "msn": Place(r"[0-9]{1,9}", "msn", int),
    "part": Place(r"[0-9]{1,4}", "part", int),
    "pid": Place(r"[A-Za-z0-9_-]{1,32}", "participant"),  # a participant on the stage
    "action": Place(r"[a-z]{1,16}", "action"),  # accept, decline, mute, ... (control/stage.py)
    "name": Place(r"[A-Za-z0-9_.-]{1,64}", "name"),  # a static file
    "node": Place(r"[A-Za-z0-9_-]{1,32}", "node"),  # a node, in the edge's /o/{node}/ prefix
    "session": Place(r"[A-Za-z0-9_-]{16,64}", "session"),  # a WHIP session (unguessable: services/room.py)
}
EDGE_PREFIX = "/o/{node}"  # an edge routes media to a node by this prefix (docs/edge.md)
MEDIA_OTHER = "/media/other"  # the label of a /media/ path that is no route
OTHER = "other"  # the label of any other path that is no route

_PLACE = re.compile(r"\{([a-z]+)\}")
_META = re.compile(r"([.^$|?*+()\[\]{}\\])")
READ = frozenset({"GET", "HEAD"})


def _literal(text: str) -> str:
    """``text`` matched literally: only regex metacharacters escaped (``re.escape`` also escapes
    '-', which reads badly in a VCL)."""
    return _META.sub(r"\\\1", text)


def _compile(template: str, flavor: str, *, captures: bool = True) -> str:
    """``template`` as regex text (not anchored): literals escaped, each placeholder its grammar,
    captured as ``(?P<name>...)`` (python), ``(?<amphi_capture>...)`` (nginx) or a numbered
    group (vcl); with ``captures=False``, none is."""
    out, at = [], 0
    for m in _PLACE.finditer(template):
        out.append(_literal(template[at:m.start()]))
        place = PLACES[m.group(1)]
        if not captures:
            out.append(place.grammar)
        elif flavor == "python":
            out.append(f"(?P<{m.group(1)}>{place.grammar})")
        elif flavor == "nginx":
            out.append(f"(?<amphi_{place.capture}>{place.grammar})")
        else:
            out.append(f"({place.grammar})")
        at = m.end()
    out.append(_literal(template[at:]))
    text = "".join(out)
    if flavor != "python" and ('"' in text or "\\\\" in text):
        raise ValueError(f"{template!r}: not writable in a VCL or nginx string")  # never, with these grammars
    return text


@dataclass(frozen=True)
class Route:
    name: str  # unique: "join", "media.part", "spaces.create"
    template: str  # also the metric label
    kind: str  # the handler family: media, join, edge, events, ops, api, whip, page, static
    methods: frozenset[str] = READ
    file: str | None = None  # media: live, vod, init, download, part, segment
    access: str = "open"  # media: "token" (in the path), "edge" (x-amphi-edge), "bare" (none)
    public_once_ended: bool = False  # bare media served without a token once the Space has ended
    cacheable: bool = False  # an edge may keep the answer
    params: tuple[str, ...] = field(init=False)
    numbers: tuple[str, ...] = field(init=False, repr=False)  # the params that are ints
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(_PLACE.findall(self.template)))
        object.__setattr__(self, "numbers", tuple(p for p in self.params if PLACES[p].type is int))
        object.__setattr__(self, "regex", re.compile(f"^{_compile(self.template, 'python')}$"))

    def path(self, **params: object) -> str:
        """The URL path of this route with these values; ``ValueError`` if one is missing,
        extra or outside its grammar."""
        if set(params) != set(self.params):
            raise ValueError(f"{self.name} takes {', '.join(self.params) or 'no parameters'}, not {sorted(params)}")
        path = _PLACE.sub(lambda m: str(params[m.group(1)]), self.template)
        if not self.regex.match(path):
            raise ValueError(f"{path!r} is not a valid {self.name} path")
        return path

    def pattern(self, flavor: str, *, node: bool = False, query: str = "") -> str:
        """The anchored regex text of this route for ``flavor`` (see ``FLAVORS``), under the
        edge's ``/o/{node}`` prefix if ``node``, followed by ``query`` (regex text, for VCL's
        ``req.url`` which carries the query string)."""
        if flavor not in FLAVORS:
            raise ValueError(f"{flavor!r}: a flavor is one of {', '.join(FLAVORS)}")
        template = EDGE_PREFIX + self.template if node else self.template
        return f"^{_compile(template, flavor)}{query}$"

    @property
    def directory(self) -> str:
        return self.template.rpartition("/")[0]

    @property
    def tail(self) -> str:
        return self.template.rpartition("/")[2]


class Match(NamedTuple):
    route: Route
    params: dict[str, str | int]
    allowed: bool = True  # False: the path is this route's, the method is not (405)


_new_match = tuple.__new__  # Match(r, params) without the named tuple's Python-level __new__ (the media path)


@dataclass(frozen=True)
class EdgePattern:
    """Regex text for an edge, and the number of each of its captures (for VCL's ``regsub``:
    ``"\\\\%d" % p.group("id")``)."""

    text: str
    groups: tuple[str, ...]  # the captured names, in order: "node", placeholders, "file", "query"

    def group(self, name: str) -> int:
        return self.groups.index(name) + 1


_SHAPED_TAIL = re.compile(r"^(?:\{[a-z]+\}\.)+[a-z0-9]+$")  # "{msn}.{part}.m4s": placeholders, dots, a suffix


def _shape(tail: str) -> str:
    """A last segment's shape: its suffix and number of dots ("m4s/2" for "12.3.m4s")."""
    return f"{tail.rpartition('.')[2]}/{tail.count('.')}"


class RouteTable:
    """The routes, indexed by their first path segment and their last one: the literal name
    (``join``, ``live.m3u8``) or, for a last segment of placeholders and dots, its shape
    (``{msn}.{part}.m4s``: "m4s/2"). ``match`` tries a handful of regexes at most (media: the
    token, edge and bare forms of one file, token first); the candidate lists are built once."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes: dict[str, Route] = {}
        index: dict[tuple[str, str | None], list[Route]] = {}
        for r in routes:
            if r.name in self._routes:
                raise ValueError(f"two routes named {r.name!r}")
            self._routes[r.name] = r
            first = r.template[1:].partition("/")[0]
            if "{" in first:
                raise ValueError(f"{r.template!r}: the first segment must be literal")
            if "{" not in r.tail:
                key: str | None = r.tail
            elif _SHAPED_TAIL.match(r.tail):
                key = _shape(r.tail)
            else:
                key = None  # any last segment: tried after the indexed ones
            index.setdefault((first, key), []).append(r)
        self._memo: dict[tuple[str, str | None], Match] = {}  # paths without a token: the same for everyone
        self._rest = {first: tuple(rs) for (first, key), rs in index.items() if key is None}
        self._index: dict[str, dict[str, tuple[Route, ...]]] = {}  # first segment -> last (or shape) -> routes
        for (first, key), rs in index.items():
            if key is not None:
                self._index.setdefault(first, {})[key] = tuple(rs) + self._rest.get(first, ())

    def __getitem__(self, name: str) -> Route:
        return self._routes[name]

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes.values())

    def __len__(self) -> int:
        return len(self._routes)

    def match(self, path: str, method: str | None = None) -> Match | None:
        """The route of ``path`` and its parameters (typed: msn and part are ints); None if no
        route has this path. With ``method``, a route that takes it is preferred; if none does,
        the match says so (``allowed`` False). A match is shared: do not change its params.

        Matches of paths that are the same for every caller (a Space's join, its events, the
        API; not media, whose paths carry tokens and numbers) are remembered, up to
        ``MEMO_SIZE``: a surge of joins to one Space looks its path up once."""
        if path.startswith("/media/"):  # tokens and numbers: a path is never asked for twice
            return self._match(path, method)
        memo = self._memo
        key = (path, method)
        hit = memo.get(key)
        if hit is not None:
            return hit
        found = self._match(path, method)
        if found is not None:
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[key] = found
        return found

    def _match(self, path: str, method: str | None) -> Match | None:
        found: Match | None = None
        slash = path.find("/", 1)
        first = path[1:slash] if slash > 0 else path[1:]
        last = path[path.rfind("/") + 1:]
        by_last = self._index.get(first)
        candidates = None
        if by_last is not None:
            candidates = by_last.get(last)
            if candidates is None and "." in last:
                candidates = by_last.get(_shape(last))
        for r in candidates if candidates is not None else self._rest.get(first, ()):
            m = r.regex.match(path)
            if m is None:
                continue
            params: dict[str, str | int] = m.groupdict()  # type: ignore[assignment]
            for k in r.numbers:
                params[k] = int(params[k])
            if method is None or method in r.methods:
                return _new_match(Match, (r, params, True))
            if found is None:
                found = Match(r, params, allowed=False)
        return found

    def label(self, path: str) -> str:
        """The metric label of ``path``: its route's template, else ``/media/other`` or ``other``."""
        m = self._match(path, None)
        if m is not None:
            return m.route.template
        return MEDIA_OTHER if path.startswith("/media/") else OTHER

    def named(self, prefix: str) -> list[Route]:
        """The routes whose name starts with ``prefix`` (``"bare."``), in table order."""
        return [r for r in self if r.name.startswith(prefix)]

    def edge_regex(self, names: Iterable[str], flavor: str, *, node: bool = False, query: str = "") -> EdgePattern:
        """One anchored regex for routes that share their directory (all but the last
        segment): the directory's placeholders captured (named for nginx, numbered for vcl), then
        the alternation of their files captured as ``file`` (nginx: ``$amphi_file``), then
        ``query`` captured as ``query`` if given (VCL: the group always takes part, maybe empty)."""
        routes = [self[n] for n in names]
        dirs = {r.directory for r in routes}
        if len(dirs) != 1:
            raise ValueError(f"routes {names} do not share one directory: {sorted(dirs)}")
        if flavor not in ("vcl", "nginx"):
            raise ValueError(f"{flavor!r}: an edge flavor is vcl or nginx")
        directory = (EDGE_PREFIX if node else "") + dirs.pop()
        files = "|".join(_compile(r.tail, flavor, captures=False) for r in routes)
        groups = tuple(_PLACE.findall(directory)) + ("file",)
        text = f"^{_compile(directory, flavor)}/" + (f"(?<amphi_file>{files})" if flavor == "nginx" else f"({files})")
        if query:
            text += f"(?<amphi_query>{query})" if flavor == "nginx" else f"({query})"
            groups += ("query",)
        return EdgePattern(f"{text}$", groups)


MEDIA_FILES = {  # file -> the last segment of its URL
    "index": "index.m3u8",
    "live": "live.m3u8",
    "vod": "vod.m3u8",
    "init": "init.mp4",
    "download": "download.m4a",
    "part": "{msn}.{part}.m4s",
    "segment": "{msn}.m4s",
}
_PUBLIC_ONCE_ENDED = ("vod", "init", "download", "segment")


def _media() -> Iterator[Route]:
    for access, directory in (("token", "/media/{id}/t/{token}"), ("edge", "/media/{id}/edge"), ("bare", "/media/{id}")):
        for file, tail in MEDIA_FILES.items():
            name = "media" if access == "token" else access
            yield Route(f"{name}.{file}", f"{directory}/{tail}", "media", file=file, access=access,
                        public_once_ended=access == "bare" and file in _PUBLIC_ONCE_ENDED,
                        cacheable=access != "bare" or file in _PUBLIC_ONCE_ENDED)


JOIN_BODY_LIMIT = 4096  # a join's body: a ticket or a token fits many times over (the node's and the edge's bound)


def _api() -> Iterator[Route]:
    post, get = frozenset({"POST"}), READ
    yield Route("join", "/api/spaces/{id}/join", "join", post)
    yield Route("leave", "/api/spaces/{id}/leave", "join", post)
    yield Route("line", "/api/spaces/{id}/line", "join", get, cacheable=True)  # the line document: edges cache it
    yield Route("joins", "/api/edge/joins", "edge", post)  # an edge's batch of joins (its credential)
    yield Route("renewals", "/api/edge/renewals", "edge", post)  # seats an edge renewed (its credential)
    yield Route("events", "/api/spaces/{id}/events", "events", frozenset({"GET"}))
    # WHIP (RFC 9725): the endpoint and its session resources; CORS for any origin (web/app.py)
    yield Route("speak", "/api/spaces/{id}/speak", "whip", post)
    yield Route("speak.session", "/api/spaces/{id}/speak/{session}", "whip", frozenset({"DELETE", "PATCH"}))
    for name, template, methods in (
        ("node", "/api/node", get),
        ("nodes", "/api/nodes", get),
        ("node.drain", "/api/nodes/{node}/drain", post),  # hand its Spaces to their standbys (docs/cluster.md)
        ("spaces.create", "/api/spaces", post),
        ("spaces.list", "/api/spaces", get),
        ("space", "/api/spaces/{id}", get),
        ("space.start", "/api/spaces/{id}/start", post),
        ("space.end", "/api/spaces/{id}/end", post),
        ("space.defense", "/api/spaces/{id}/defense", post),
        ("speak.ice", "/api/spaces/{id}/ice", get),  # STUN/TURN for a speaker (docs/deploying.md)
        ("stage", "/api/spaces/{id}/stage", get),
        ("stage.session", "/api/spaces/{id}/stage/session", post),
        ("stage.requests", "/api/spaces/{id}/stage/requests", post),
        ("stage.invites", "/api/spaces/{id}/stage/invites", post),
        ("stage.action", "/api/spaces/{id}/stage/{pid}/{action}", post),
    ):
        yield Route(name, template, "api", methods)
    yield Route("openapi", "/api/openapi.json", "api", get, cacheable=True)  # this API described (web/openapi.py)


def _pages() -> Iterator[Route]:
    yield Route("index", "/", "page")
    yield Route("listener", "/s/{id}", "page")
    yield Route("host", "/s/{id}/host", "page")
    yield Route("static", "/static/{name}", "static", cacheable=True)
    yield Route("vendor.hls", "/vendor/hls.min.js", "static", cacheable=True)
    yield Route("vendor.shaka", "/vendor/shaka-player.js", "static", cacheable=True)


def _ops() -> Iterator[Route]:
    get, post = frozenset({"GET"}), frozenset({"POST"})
    yield Route("metrics", "/metrics", "ops", get)
    yield Route("dashboard", "/dashboard", "ops", get)
    yield Route("dashboard.login", "/dashboard/login", "ops", post)
    yield Route("dashboard.logout", "/dashboard/logout", "ops", post)
    yield Route("dashboard.stream", "/dashboard/stream", "ops", get)
    yield Route("vendor.uplot", "/vendor/uPlot.iife.min.js", "ops", get)
    yield Route("vendor.uplot_css", "/vendor/uPlot.min.css", "ops", get)


ROUTES = RouteTable([*_media(), *_api(), *_pages(), *_ops()])
