"""Structured logs: one JSON object per line, carrying the node, the Space and the request
they belong to (``amphi serve --log-format json|text``; JSON by default when stderr is not a
terminal).

``node_id`` is the process's (set once at start-up, ``set_node_id``). The other ids live in
context variables, so everything logged while a request or a Space's task runs carries them
without being passed around: ``request_id`` by the control API for each request (``X-Request-Id`` if the client sent
one), ``space_id`` by whoever acts on a Space. A call may also give them explicitly with
``extra={"space_id": ...}``; the state-change lines of ``Observer.event`` (``amphi.obs.observer``, logger "amphi.events") add their
fields under ``extra={"fields": {...}}``.

Nothing here logs per media request: a node serving 10k requests a second logs state
changes, not traffic (traffic is in /metrics).
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

_node_id: str | None = None
space_id: ContextVar[str | None] = ContextVar("space_id", default=None)
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

NOISY = ("aioice", "aiortc", "_granian", "granian", "httpx", "httpcore")  # httpx logs every request


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "node_id", "space_id"?, "request_id"?, ...fields}``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "node_id": _node_id,
        }
        for name, var in (("space_id", space_id), ("request_id", request_id)):
            value = getattr(record, name, None) or var.get()
            if value is not None:
                out[name] = value
        fields = getattr(record, "fields", None)
        if fields:
            for k, v in fields.items():
                out.setdefault(k, v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def set_node_id(value: str) -> None:
    global _node_id
    _node_id = value


def configure(fmt: str | None, verbose: bool = False) -> None:
    """Sets up the root logger once: ``fmt`` is "json", "text", or None (JSON unless stderr
    is a terminal)."""
    if fmt is None:
        fmt = "text" if sys.stderr.isatty() else "json"
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be json or text, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
