"""The node's two keys, each from config, else the environment, else a file in the data
directory made once (mode 0600):

    token key      signs admission tokens, tickets, grants and edge credentials; edges and
                   other nodes that should accept this node's tokens need the same key
                   (``admission.secret``, ``$AMPHI_SECRET``, ``<data_dir>/secret``)
    operator key   opens /dashboard and /metrics (``operator_key``, ``$AMPHI_OPERATOR_KEY``,
                   ``<data_dir>/operator_key``)
"""

from __future__ import annotations

import os

from amphi.control.tokens import new_secret
from amphi.core.config import Config
from amphi.core.files import write_atomic


def token_key(cfg: Config) -> bytes:
    return cfg.admission.secret or _stored(cfg, "AMPHI_SECRET", "secret")


def operator_key(cfg: Config) -> str:
    return cfg.operator_key or _stored(cfg, "AMPHI_OPERATOR_KEY", "operator_key").decode()


def _stored(cfg: Config, env_name: str, file_name: str) -> bytes:
    if env := os.environ.get(env_name):
        return env.encode()
    path = cfg.data_dir / file_name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, new_secret().hex().encode(), mode=0o600)
    return path.read_bytes().strip()
