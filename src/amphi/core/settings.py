"""Settings from a TOML file, ``AMPHI_*`` environment variables and flags, onto ``Config``
(docs/config.md). Pure: text and mappings in, a ``Config`` or text out; the CLI reads the file
and the environment and hands them over.

Every field of the dataclasses that ``Config`` gathers is a setting, named by its path
(``http.port``, ``media.sound.target_lufs``, ``node_id``), found from the dataclasses and their
type hints, so a field added later is a setting with no code here. In the file a path is a table
and a key (``[media.sound]`` ``target_lufs = -16.0``); in the environment it is ``AMPHI_`` and the
path in capitals, ``_`` for ``.`` (``AMPHI_MEDIA_SOUND_TARGET_LUFS``, tuples comma-separated).
Layers are merged later-wins (defaults < file < environment < flags), each value remembering
where it came from; then every value, however it came, passes the same checks (``CHECKS``,
``BOUNDS``, ``CHOICES`` and the cross-checks in ``build``), and an error names its source::

    from_file(text, name) ─┐
    from_env(environ) ─────┼─> build(*layers) -> Config ──> to_toml / to_json / example
    flags (the CLI's) ─────┘
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import io
import json
import re
import textwrap
import tokenize
import tomllib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from amphi.core.config import Config

SECRETS = frozenset({"admission.secret", "operator_key", "ice.turn_secret"})  # never printed
ALIASES = {  # older environment names, kept: a setting's own AMPHI_ name wins over its alias
    "AMPHI_SECRET": "admission.secret",
    "AMPHI_NODE_MODULES": "web_assets_dir",
    "AMPHI_TURN_SECRET": "ice.turn_secret",
}
OTHER_ENV = {  # AMPHI_ variables that are not settings (any other AMPHI_ name is an error)
    "AMPHI_CONFIG": "the config file, as --config",
    "AMPHI_SERVER": "amphi space: the node's URL, as --server",
    "AMPHI_API_KEY": "amphi space: an API key, as --key",
    "AMPHI_HOST_KEY": "amphi space start/end: the Space's host key, as --host-key",
    "AMPHI_FUZZ_SEED": "tests/integration/test_fuzz.py: other inputs",
    "AMPHI_FUZZ_EXAMPLES": "tests/integration/test_fuzz.py: examples per operation",
    "AMPHI_BENCH_SMALL": "bench/: smaller runs",
    "AMPHI_UPDATE_GOLDEN": "tests: rewrite golden files",
}

# Limits on values, however they come (the serve flags' click types are made from these too)
BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "http.port": (0, 65535),
    "http.header_read_timeout_s": (1, None),
    "admission.max_listeners": (1, None),
    "admission.min_listeners": (1, None),
    "admission.admit_rate_per_s": (0.1, None),
    "admission.admit_burst": (1, None),
    "admission.token_ttl_s": (2, None),
    "admission.seat_grace_s": (0, None),
    "admission.ticket_hold_s": (1, None),
    "admission.max_waiting": (1, None),
    "stage.silence_timeout_s": (1, None),
    "defense.pow_bits": (1, 28),
    "defense.join_rate_per_s": (0.1, None),
    "defense.address_rate_per_s": (0.1, None),
    "defense.address_burst": (1, None),
    "media.parts_per_segment": (2, 16),
    "media.sound.target_lufs": (-30, -10),
    "media.sound.dead_air_s": (2, 3600),
    "ice.turn_ttl_s": (60, None),
    "keys.rate_per_s": (0.001, None),
    "keys.burst": (1, None),
    "keys.failure_rate_per_s": (0.001, None),
    "keys.failure_burst": (1, None),
    "keys.max_tracked": (1, None),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "defense.pow_mode": ("on", "off", "auto"),
}


class SettingsError(ValueError):
    """A setting that cannot be used; the message names where it came from (one line)."""


@dataclass(frozen=True)
class Setting:
    """One field of one of the config dataclasses."""

    path: str  # "media.sound.target_lufs"
    hint: Any  # its type
    default: Any  # what a fresh Config has (computed: as computed now)
    computed: bool  # the default comes from a function (it depends on the machine)
    owner: type

    @property
    def table(self) -> str:
        return self.path.rpartition(".")[0]

    @property
    def key(self) -> str:
        return self.path.rpartition(".")[2]

    @property
    def env(self) -> str:
        return "AMPHI_" + self.path.replace(".", "_").upper()


@dataclass(frozen=True)
class Given:
    value: Any
    source: str  # "amphi.toml: [http] port", "$AMPHI_HTTP_PORT", "--port"


def _walk(cls: type, prefix: str) -> Iterator[Setting | tuple[str, type]]:
    hints = typing.get_type_hints(cls)
    yield (prefix, cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from _walk(hint, path)
            continue
        computed = f.default is dataclasses.MISSING
        default = f.default_factory() if computed else f.default  # type: ignore[misc]
        yield Setting(path, hint, default, computed, cls)


@cache
def _catalog() -> tuple[dict[str, type], dict[str, Setting]]:
    tables: dict[str, type] = {}
    found: dict[str, Setting] = {}
    for item in _walk(Config, ""):
        if isinstance(item, Setting):
            found[item.path] = item
        else:
            tables[item[0]] = item[1]
    return tables, found


def tables() -> dict[str, type]:
    """Table name ("" for the top level) -> its dataclass, parents before children."""
    return _catalog()[0]


def settings() -> dict[str, Setting]:
    """Path -> setting, every field of every config dataclass."""
    return _catalog()[1]


def _where(table: str) -> str:
    return f"[{table}]" if table else "the top level"


def _label(name: str, path: str) -> str:
    table, _, key = path.rpartition(".")
    return f"{name}: [{table}] {key}" if table else f"{name}: {key}"


# -- types ------------------------------------------------------------------------------------

def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(the type, whether None is allowed)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _element(hint: Any) -> Any | None:
    """The element type of ``tuple[X, ...]``, else None."""
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
    return None


def describe(hint: Any) -> str:
    """What a value of this type is, for an error message."""
    inner, optional = _unwrap(hint)
    element = _element(inner)
    if element is not None:
        text = f"an array of {describe(element).split(' ', 1)[1]}s"
    else:
        text = {bool: "a boolean (true or false)", int: "an integer", float: "a number", str: "a string",
                Path: "a path (a string)", bytes: "a string"}.get(inner, f"a {getattr(inner, '__name__', inner)}")
    return f'{text} or "" (unset)' if optional else text


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {int: "an integer", float: "a float", str: "a string", list: "an array", dict: "a table"}.get(
        type(value), f"a {type(value).__name__}")


def _from_toml(hint: Any, value: Any) -> Any:
    """A TOML value as ``hint`` wants it (TypeError if it is not one)."""
    inner, optional = _unwrap(hint)
    if optional and value == "":
        return None
    element = _element(inner)
    if element is not None:
        if isinstance(value, list | tuple):
            return tuple(_from_toml(element, v) for v in value)
    elif inner is bool:
        if isinstance(value, bool):
            return value
    elif isinstance(value, bool):
        pass  # true is no integer
    elif inner is int:
        if isinstance(value, int):
            return value
    elif inner is float:
        if isinstance(value, int | float):
            return float(value)
    elif inner in (str, Path, bytes):
        if isinstance(value, str):
            return value.encode() if inner is bytes else inner(value)
    raise TypeError


BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _from_text(hint: Any, text: str) -> Any:
    """An environment variable's text as ``hint`` wants it (ValueError if it is not one)."""
    inner, optional = _unwrap(hint)
    if optional and text == "":
        return None
    element = _element(inner)
    if element is not None:
        return tuple(_from_text(element, part.strip()) for part in text.split(",") if part.strip())
    if inner is bool:
        return BOOL_WORDS[text.strip().lower()]  # KeyError is a LookupError; see from_env
    if inner is int:
        return int(text.strip())
    if inner is float:
        return float(text.strip())
    if inner is bytes:
        return text.encode()
    return inner(text)


def _suggest(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# -- the layers -------------------------------------------------------------------------------

def from_file(text: str, name: str) -> dict[str, Given]:
    """The settings a TOML file gives (SettingsError: malformed, an unknown key, a wrong type)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        at = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
        if at:
            msg = f"line {at[1]}, column {at[2]}: {msg[:at.start()]}"
        raise SettingsError(f"{name}: not TOML: {msg}") from None
    return from_table(data, name)


def from_table(data: Mapping[str, Any], name: str, table: str = "") -> dict[str, Given]:
    """The settings in a parsed TOML document (or one of its tables)."""
    out: dict[str, Given] = {}
    known_tables, known = tables(), settings()
    for key, value in data.items():
        path = f"{table}.{key}" if table else key
        if path in known_tables:
            if not isinstance(value, dict):
                raise SettingsError(f"{name}: {key!r} in {_where(table)} is the table [{path}], not {_kind(value)}")
            out.update(from_table(value, name, path))
        elif path in known:
            try:
                out[path] = Given(_from_toml(known[path].hint, value), _label(name, path))
            except TypeError:
                raise SettingsError(f"{_label(name, path)}: expected {describe(known[path].hint)}, got "
                                    f"{_kind(value)} ({value!r})") from None
        else:
            here = [p.rpartition(".")[2] for p in (*known, *known_tables) if p and p.rpartition(".")[0] == table]
            raise SettingsError(f"{name}: unknown key {key!r} in {_where(table)}{_suggest(key, here)}")
    return out


def env_names() -> dict[str, str]:
    """Environment variable -> setting path: each setting's own name, then the aliases."""
    names = {s.env: s.path for s in settings().values()}
    return {**{k: v for k, v in ALIASES.items() if k not in names}, **names}


def from_env(environ: Mapping[str, str]) -> dict[str, Given]:
    """The settings ``AMPHI_*`` variables give. A variable that names no setting (and is not
    one of ``OTHER_ENV``) is an error, as an unknown key in the file is: a misspelt name would
    otherwise leave the node running with a value its operator believes changed."""
    names, known = env_names(), settings()
    out: dict[str, Given] = {}
    for var in sorted(environ, key=lambda v: v in ALIASES, reverse=True):  # aliases first: their setting's name wins
        if not var.startswith("AMPHI_") or var in OTHER_ENV:
            continue
        if var not in names:
            raise SettingsError(f"${var} names no setting{_suggest(var, [*names, *OTHER_ENV])} (docs/config.md)")
        path = names[var]
        try:
            out[path] = Given(_from_text(known[path].hint, environ[var]), f"${var}")
        except (ValueError, LookupError):
            raise SettingsError(f"${var}: expected {describe(known[path].hint).replace('an array of', 'comma-separated')}"
                                f", got {environ[var]!r}") from None
    return out


# -- checks: one place, whichever way a value came ---------------------------------------------

def _node_id(value: str) -> str:
    from amphi.web.routes import PLACES  # the one grammar of a node's name (edges route on it)

    if not re.fullmatch(PLACES["node"].grammar, value):
        raise ValueError("1-32 letters, digits, '_' or '-'")
    return value


def _networks(value: tuple[str, ...]) -> tuple[str, ...]:
    from amphi.defense.shield import parse_networks

    parse_networks(value)  # ValueError names the bad one
    return value


def _ice_addresses(value: tuple[str, ...]) -> tuple[str, ...]:
    from amphi.control.ice import parse_address

    return tuple(parse_address(v) for v in value)  # ValueError names the bad one


def _ice_urls(kind: str) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    from amphi.control.ice import parse_ice_url

    def check(value: tuple[str, ...]) -> tuple[str, ...]:
        for v in value:
            parse_ice_url(v, kind)
        return value
    return check


CHECKS: dict[str, Callable[[Any], Any]] = {  # path -> the value to use (ValueError if it is no good)
    "node_id": _node_id,
    "edges": lambda value: tuple(e.rstrip("/") for e in value),
    "defense.trusted_proxies": _networks,
    "ice.addresses": _ice_addresses,
    "ice.announced": _ice_addresses,
    "ice.stun": _ice_urls("stun"),
    "ice.turn": _ice_urls("turn"),
}


def _bounded(path: str, value: Any) -> None:
    lo, hi = BOUNDS[path]
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        span = f"{lo} to {hi}" if lo is not None and hi is not None else f"at least {lo}" if lo is not None else f"at most {hi}"
        raise ValueError(f"{value} is out of range ({span})")


def build(*layers: Mapping[str, Given]) -> Config:
    """The Config the layers give, later layers winning, every value checked."""
    given: dict[str, Given] = {}
    for layer in layers:
        given.update(layer)
    known = settings()

    def source(path: str) -> str:
        return given[path].source if path in given else f"{path} (default)"

    values = {path: (given[path].value if path in given else s.default) for path, s in known.items()}
    chosen = {path: g.value for path, g in given.items()}  # what goes into the Config
    for path in known:
        try:
            if path in CHOICES and values[path] not in CHOICES[path]:
                raise ValueError(f"{values[path]!r} is not one of {', '.join(CHOICES[path])}")
            if path in BOUNDS:
                _bounded(path, values[path])
            if path in CHECKS:
                values[path] = CHECKS[path](values[path])
                if path in chosen:
                    chosen[path] = values[path]
        except ValueError as e:
            raise SettingsError(f"{source(path)}: {e}") from None

    lo, hi = values["admission.min_listeners"], values["admission.max_listeners"]
    if lo > hi:  # the adaptive limit's floor follows a small ceiling down, unless it was set
        if "admission.min_listeners" in given:
            raise SettingsError(f"{source('admission.min_listeners')}: {lo} is above admission.max_listeners "
                                f"({hi}, from {source('admission.max_listeners')})")
        chosen["admission.min_listeners"] = hi
    if (values["http.tls_cert"] is None) != (values["http.tls_key"] is None):
        which = "http.tls_cert" if values["http.tls_cert"] is not None else "http.tls_key"
        raise SettingsError(f"{source(which)}: TLS needs both http.tls_cert and http.tls_key")
    if "ice.addresses" not in given:  # the node offers the address it binds, if that is one peers can send to
        try:
            chosen["ice.addresses"] = values["ice.addresses"] = _ice_addresses((values["http.host"],))
        except ValueError:
            pass  # a name, 0.0.0.0 or ::: the default, 127.0.0.1
    if not values["ice.addresses"]:
        raise SettingsError(f"{source('ice.addresses')}: at least one ICE address is needed")
    if values["ice.announced"] and len(values["ice.announced"]) != len(values["ice.addresses"]):
        raise SettingsError(f"{source('ice.announced')}: {len(values['ice.announced'])} announced address(es) for "
                            f"{len(values['ice.addresses'])} ICE address(es): give one for each, in the same order")
    if values["ice.turn"] and not values["ice.turn_secret"]:
        raise SettingsError(f"{source('ice.turn')}: TURN URLs need the TURN server's shared secret (ice.turn_secret)")
    return _assemble(Config, "", chosen)


def _assemble(cls: type, prefix: str, chosen: Mapping[str, Any]) -> Any:
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _assemble(hints[f.name], path, chosen)
        elif path in chosen:
            kwargs[f.name] = chosen[path]
    return cls(**kwargs)


def value_of(cfg: Config, path: str) -> Any:
    obj: Any = cfg
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


# -- out: TOML, JSON, the example file ----------------------------------------------------------

def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


def _by_table() -> dict[str, list[Setting]]:
    out: dict[str, list[Setting]] = {t: [] for t in tables()}
    for s in settings().values():
        out[s.table].append(s)
    return out


def to_toml(cfg: Config) -> str:
    """The configuration as a file ``from_file`` takes back; secrets are not printed (a comment
    says whether one is set)."""
    lines = ["# amphi config show: the effective configuration (docs/config.md)"]
    for table, group in _by_table().items():
        if table:
            lines += ["", f"[{table}]"]
        for s in group:
            value = value_of(cfg, s.path)
            if s.path in SECRETS:
                lines.append(f"# {s.key}: {'set (not shown)' if value is not None else 'unset'}")
            elif value is None:
                lines.append(f"# {s.key}: unset" if s.default is None else f'{s.key} = ""')
            else:
                lines.append(f"{s.key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def to_json(cfg: Config) -> dict[str, Any]:
    """The configuration as nested JSON objects; a secret that is set is "(redacted)"."""
    out: dict[str, Any] = {}
    for s in settings().values():
        node = out
        for part in s.table.split(".") if s.table else ():
            node = node.setdefault(part, {})
        value = value_of(cfg, s.path)
        if s.path in SECRETS and value is not None:
            value = "(redacted)"
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Path | bytes):
            value = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        node[s.key] = value
    return out


def _source_comments(cls: type) -> tuple[list[str], dict[str, tuple[list[str], str | None]]]:
    """The class's docstring lines, and for each field the comment lines just above it (after
    the previous field) and the comment at the end of its own lines, as written in config.py."""
    src = textwrap.dedent(inspect.getsource(cls))
    node = ast.parse(src).body[0]
    assert isinstance(node, ast.ClassDef)
    doc = (ast.get_docstring(node) or "").splitlines()
    lines = src.splitlines()
    trailing = {tok.start[0]: tok.string for tok in tokenize.generate_tokens(io.StringIO(src).readline)
                if tok.type == tokenize.COMMENT and lines[tok.start[0] - 1].strip() != tok.string}
    out: dict[str, tuple[list[str], str | None]] = {}
    def comment_lines(first: int, last: int) -> list[str]:
        return [lines[i - 1].strip() for i in range(first, last + 1) if lines[i - 1].strip().startswith("#")]

    previous = node.body[0].end_lineno or node.lineno
    last_field = None
    for n, item in enumerate(node.body):
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            end = item.end_lineno or item.lineno
            mine = [trailing[i] for i in range(item.lineno, end + 1) if i in trailing]
            out[item.target.id] = (comment_lines(previous + 1, item.lineno - 1), mine[-1] if mine else None)
            previous, last_field = end, n
    if last_field is not None:  # comment lines that continue the last field's
        upto = node.body[last_field + 1].lineno - 1 if last_field + 1 < len(node.body) else len(lines)
        out[""] = (comment_lines(previous + 1, upto), None)
    return doc, out


def example() -> str:
    """amphi.example.toml: every setting, commented out at its default, with config.py's comments."""
    lines = ["# Amphi's configuration: every setting at its default (generated by `amphi config example`;",
             "# docs/config.md). Uncomment what you change; `amphi serve --config amphi.toml`.",
             "# Environment variables AMPHI_<TABLE>_<KEY> override this file, and serve's flags both."]
    for table, group in _by_table().items():
        doc, comments = _source_comments(tables()[table])
        doc = doc or ([f"{tables()[table].__name__}: top-level keys, before any table"] if not table else [])
        lines.append("")
        lines += [f"# {d}".rstrip() for d in doc]
        if table:
            lines.append(f"[{table}]")
        for s in group:
            above, after = comments.get(s.key, ([], None))
            lines += above
            if s.computed:
                text = f"# {s.key} = ...  (computed at start-up)"
            elif s.default is None:
                text = f'# {s.key} = ""'
            else:
                text = f"# {s.key} = {toml_value(s.default)}"
            lines.append(f"{text}  {after}" if after else text)
        lines += comments.get("", ([], None))[0]
    return "\n".join(lines) + "\n"
