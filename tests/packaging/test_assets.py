"""Where a node finds the pages' npm libraries (amphi.web.assets), and what it says when they
are not there. The installed wheel's own copy is tested in test_wheel.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from amphi.core.config import Config
from amphi.web import assets
from amphi.web.routes import ROUTES
from tests.integration.amphi_proc import AmphiServer

REPO = Path(__file__).resolve().parents[2]


def test_every_served_library_has_a_route_and_an_npm_package() -> None:
    assert set(assets.VENDOR) == {r.name for r in ROUTES if r.name.startswith("vendor.")}
    assert assets.packages() == ["hls.js", "shaka-player", "uplot"]


def test_a_checkout_serves_its_node_modules_unless_told_otherwise(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert not assets.PACKAGED.exists(), "a checkout holds no packaged copy (it is made in the build directory)"
    assert assets.root() == REPO / "node_modules"
    assert assets.root(tmp_path) == tmp_path
    monkeypatch.delenv("AMPHI_NODE_MODULES", raising=False)
    assert Config().web_assets_dir is None
    monkeypatch.setenv("AMPHI_NODE_MODULES", str(tmp_path))
    assert Config().web_assets_dir == tmp_path


def test_a_node_without_the_libraries_says_how_to_get_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("AMPHI_NODE_MODULES", str(empty))  # the node's environment
    server = AmphiServer(tmp_path / "data").start()
    try:
        for name, (rel, _) in assets.VENDOR.items():
            r = server.http.get(ROUTES[name].template)
            assert r.status_code == 404, r.text
            body = r.json()
            assert body["error"] == "not_found"
            assert rel in body["message"] and str(empty) in body["message"] and "npm ci" in body["message"]
    finally:
        server.stop()
    said = server.log.read_text()
    assert "web assets missing from" in said and "shaka-player/dist/shaka-player.hls.js" in said
