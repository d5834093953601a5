"""The pages' libraries from npm (versions pinned in package.json and package-lock.json), and
where a node finds them (docs/install.md).

    /vendor/shaka-player.js   the listener page's player (docs/player.md)
    /vendor/hls.min.js        a second, independent player for the player tests
    /vendor/uPlot.*           the dashboard's charts (docs/observability.md)

They are never committed. A wheel carries copies in ``amphi/web/vendor/``, laid out as under
``node_modules/`` (setup.py copies them at build time); a source checkout serves
``node_modules/`` beside ``src/`` (``make setup`` runs ``npm ci``). ``root`` alone decides which.

Only the standard library here: setup.py reads this table at build time, before Amphi's
dependencies are installed.
"""

from __future__ import annotations

from pathlib import Path

# route name (amphi.web.routes) -> (file under node_modules, its content type)
VENDOR: dict[str, tuple[str, str]] = {
    "vendor.hls": ("hls.js/dist/hls.min.js", "text/javascript"),
    "vendor.shaka": ("shaka-player/dist/shaka-player.hls.js", "text/javascript"),
    "vendor.uplot": ("uplot/dist/uPlot.iife.min.js", "text/javascript"),
    "vendor.uplot_css": ("uplot/dist/uPlot.min.css", "text/css"),
}
# carried beside them in a wheel (and an sdist): each package's licence
LICENSES = ("hls.js/LICENSE", "shaka-player/LICENSE", "uplot/LICENSE")
VERSIONS = "versions.json"  # in a wheel's vendor directory: {npm package: version}, from package-lock.json

PACKAGED = Path(__file__).resolve().parent / "vendor"  # what a wheel (or an unpacked sdist) carries
_SRC = Path(__file__).resolve().parents[2]  # <checkout>/src when this file is in a source checkout
CHECKOUT = _SRC.parent / "node_modules"


def files() -> list[str]:
    """Every file a wheel carries from node_modules, relative to it."""
    return [rel for rel, _ in VENDOR.values()] + list(LICENSES)


def packages() -> list[str]:
    """The npm packages the files come from (``@scope/name`` counts as one)."""
    names = []
    for rel in files():
        parts = rel.split("/")
        name = "/".join(parts[:2]) if parts[0].startswith("@") else parts[0]
        if name not in names:
            names.append(name)
    return names


def _in_checkout() -> bool:
    return _SRC.name == "src" and (_SRC.parent / "package.json").is_file()


def root(override: Path | None = None) -> Path:
    """Where the node serves the libraries from: ``override`` (Config.web_assets_dir, by default
    $AMPHI_NODE_MODULES), else the installed package's own copy, else the ``node_modules`` of
    the source checkout this module runs from."""
    if override is not None:
        return override
    if PACKAGED.is_dir() or not _in_checkout():
        return PACKAGED
    return CHECKOUT


def how_to_fix(at: Path) -> str:
    if at == CHECKOUT:
        return "run `make setup` (or `npm ci`) in the source checkout"
    if at == PACKAGED:
        return ("this installation of Amphi lacks the web assets a wheel carries: install a wheel built "
                "with `make wheel` (docs/install.md), or point AMPHI_NODE_MODULES at a node_modules "
                "that `npm ci` filled from Amphi's package.json")
    return f"run `npm ci` with Amphi's package.json where {at} is, or unset AMPHI_NODE_MODULES"


def missing(at: Path) -> list[str]:
    """The served files (VENDOR) that are not under ``at``."""
    return [rel for rel, _ in VENDOR.values() if not (at / rel).is_file()]


def missing_message(at: Path, rel: str | None = None) -> str:
    what = rel if rel is not None else ", ".join(missing(at))
    return f"web assets missing from {at}: {what}. To fix: {how_to_fix(at)}"
