"""The installable package (docs/install.md), for real: a wheel built from a copy of this
checkout with the pinned setuptools (no build isolation, no index: no network), installed into
a fresh venv in a temp directory, serves ``amphi serve --demo`` from a directory with no source
tree and no node_modules, and Chromium plays its listener page.

The fresh venv gets the wheel alone (``--no-deps``); the dependencies it would pull from PyPI
are the project's .venv's, made visible through a .pth path line (which runs no hook, so the
checkout's editable ``amphi`` stays out of sight), all but matplotlib, whose extra the wheel
must do without. The wheel's ``Requires-Dist`` is checked against pyproject.toml separately.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import json
import os
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page

from amphi.web import assets
from amphi.web.routes import ROUTES
from tests.integration.amphi_proc import TEST_SEGMENT_PARTS, free_port, stop_group
from tests.web.browser import wait_for
from tests.web.test_listener_page import assert_plays

REPO = Path(__file__).resolve().parents[2]
NODE_MODULES = REPO / "node_modules"
PY = sys.executable
BUILD_TIMEOUT_S = 120
START_TIMEOUT_S = 30
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True,
        timeout: float = BUILD_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited with {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def copy_checkout(dest: Path) -> Path:
    """The checkout's files as git sees them (tracked, and new ones not ignored): no .venv,
    node_modules, data or build leftovers."""
    listed = run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], REPO).stdout
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file() and not src.is_symlink():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(src.read_bytes())
    return dest


def no_npm_env(tmp: Path) -> dict[str, str]:
    """The environment with a PATH where no npm can be found."""
    empty = tmp / "empty-path"
    empty.mkdir(exist_ok=True)
    return {**os.environ, "PATH": str(empty)}


def pip_wheel(source: Path | str, out: Path, env: dict[str, str] | None = None,
              check: bool = True) -> subprocess.CompletedProcess[str]:
    # a path, never a bare name: pip would look a name up on the index
    return run([PY, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out),
                str(source)], out.parent, env, check)


@dataclass
class Built:
    checkout: Path
    wheel: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    if assets.missing(NODE_MODULES):
        pytest.fail(f"{NODE_MODULES} lacks {assets.missing(NODE_MODULES)}: run `make setup`")
    base = tmp_path_factory.mktemp("wheel")
    checkout = copy_checkout(base / "checkout")
    (checkout / "node_modules").symlink_to(NODE_MODULES.resolve())  # what `npm ci` would make, without the network
    pip_wheel(checkout, base / "dist")
    wheels = list((base / "dist").glob("amphi-*.whl"))
    assert [w.name for w in wheels] == [f"amphi-{VERSION}-py3-none-any.whl"]
    return Built(checkout, wheels[0])


def vendor_names() -> set[str]:
    return {f"amphi/web/vendor/{name}" for name in [*assets.files(), assets.VERSIONS]}


def locked_versions() -> dict[str, str]:
    locked = json.loads((REPO / "package-lock.json").read_text())["packages"]
    return {name: locked[f"node_modules/{name}"]["version"] for name in assets.packages()}


def test_the_wheel_carries_the_web_assets_and_nothing_of_the_checkout_beside_the_package(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as z:
        names = set(z.namelist())
        assert vendor_names() <= names
        for name in assets.files():  # the very files npm installed, at the versions package-lock.json pins
            assert z.read(f"amphi/web/vendor/{name}") == (NODE_MODULES / name).read_bytes(), name
        assert json.loads(z.read(f"amphi/web/vendor/{assets.VERSIONS}")) == locked_versions()
    package_data = [p.relative_to(REPO / "src").as_posix() for pattern in
                    ("amphi/web/static/*", "amphi/sim/scenarios/*.toml", "amphi/control/store/*.lua")
                    for p in (REPO / "src").glob(pattern)]
    assert set(package_data) <= names, "the pages, the scenarios and the Lua scripts are package data"
    dist_info = f"amphi-{VERSION}.dist-info/"
    strays = [n for n in names if not (n.startswith("amphi/") or n.startswith(dist_info))]
    assert not strays, f"the wheel holds files outside the package: {strays[:5]}"
    assert not [n for n in names if "node_modules" in n or "/tests/" in n or n.startswith("tests/")]


def test_the_wheel_requires_what_pyproject_pins(built: Built) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    with zipfile.ZipFile(built.wheel) as z:
        meta = email.parser.Parser().parsestr(z.read(f"amphi-{VERSION}.dist-info/METADATA").decode())
    requires = {r.replace(" ", "") for r in meta.get_all("Requires-Dist")}
    want = {d.replace(" ", "") for d in project["dependencies"]}
    for extra, deps in project["optional-dependencies"].items():
        want |= {f'{d};extra=="{extra}"'.replace(" ", "") for d in deps}
    assert requires == want
    assert set(meta.get_all("Provides-Extra")) == set(project["optional-dependencies"])
    assert not [d for d in project["dependencies"] if d.startswith("matplotlib")], "plots are an extra"
    # the backend this test builds with is the one [build-system] pins (the test extra installs it)
    build_requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    assert f"setuptools=={importlib.metadata.version('setuptools')}" in build_requires


def test_an_sdist_carries_the_assets_and_builds_a_wheel_without_npm(built: Built, tmp_path: Path) -> None:
    run([PY, "-m", "build", "--no-isolation", "--sdist", "--outdir", str(tmp_path / "sdist"), str(built.checkout)],
        tmp_path)
    sdist = tmp_path / "sdist" / f"amphi-{VERSION}.tar.gz"
    with tarfile.open(sdist) as t:
        names = {n.removeprefix(f"amphi-{VERSION}/") for n in t.getnames()}
    assert {f"src/{n}" for n in vendor_names()} <= names
    assert {"package.json", "package-lock.json", "setup.py", "pyproject.toml"} <= names
    assert not [n for n in names if "node_modules" in n or n.startswith("tests/")]

    (tmp_path / "dist").mkdir()
    pip_wheel(sdist, tmp_path / "dist", no_npm_env(tmp_path))
    with zipfile.ZipFile(next((tmp_path / "dist").glob("amphi-*.whl"))) as z:
        assert vendor_names() <= set(z.namelist())
        for name in assets.files():
            assert z.read(f"amphi/web/vendor/{name}") == (NODE_MODULES / name).read_bytes(), name


def test_a_build_with_neither_node_modules_nor_npm_says_what_it_needs(tmp_path: Path) -> None:
    checkout = copy_checkout(tmp_path / "checkout")
    (tmp_path / "dist").mkdir()
    done = pip_wheel(checkout, tmp_path / "dist", no_npm_env(tmp_path), check=False)
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert "npm is not on PATH" in said and "node_modules" in said, said[-2000:]
    assert not list((tmp_path / "dist").glob("*.whl"))


# -- installed into a fresh venv ---------------------------------------------------------------


@dataclass
class Installed:
    venv: Path
    cwd: Path  # no source tree, no node_modules
    env: dict[str, str]

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


def visible_dependencies(deps: Path) -> None:
    """Links to what the .venv's site-packages holds, but for amphi (the checkout's, editable)
    and matplotlib (the 'plots' extra, which the node must not need)."""
    site = Path(httpx.__file__).parents[1]
    hidden = {"amphi", "matplotlib"}
    hidden_tops = {Path(str(f)).parts[0] for name in hidden for f in (importlib.metadata.files(name) or [])}
    deps.mkdir()
    for entry in site.iterdir():
        if (entry.name in hidden_tops or entry.suffix == ".pth" or entry.name.startswith("__editable__")
                or entry.name == "__pycache__"):
            continue
        (deps / entry.name).symlink_to(entry)


@pytest.fixture(scope="module")
def installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("installed")
    venv = base / "venv"
    run([PY, "-m", "venv", "--without-pip", str(venv)], base)
    py = str(venv / "bin" / "python")
    run([PY, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", str(built.wheel)], base)
    visible_dependencies(base / "deps")
    site = run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base).stdout.strip()
    (Path(site) / "amphi_test_dependencies.pth").write_text(f"{base / 'deps'}\n")
    cwd = base / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMPHI_NODE_MODULES", "VIRTUAL_ENV")}
    return Installed(venv, cwd, env)


def test_the_fresh_venv_imports_the_installed_amphi_without_matplotlib(installed: Installed) -> None:
    probe = ("import importlib.util, json, amphi; from amphi.web import assets; "
             "print(json.dumps([amphi.__file__, str(assets.root()), importlib.util.find_spec('matplotlib') is None]))")
    where, root, no_plots = json.loads(run([installed.bin("python"), "-c", probe], installed.cwd, installed.env).stdout)
    assert Path(where).is_relative_to(installed.venv), where
    assert Path(root).is_relative_to(installed.venv) and not assets.missing(Path(root)), root
    assert no_plots


PLOTTERS = """
import json, sys
from click.testing import CliRunner
from amphi.cli import main
said = {}
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(main, args)
    said[" ".join(args)] = [result.exit_code, result.output]
print(json.dumps(said))
"""


def test_the_plots_need_their_extra_and_say_so(installed: Installed, tmp_path: Path) -> None:
    """Each command that draws is refused before it starts (one process runs the three: the CLI
    takes seconds to import on a busy machine)."""
    commands = {  # -> exit status
        "loadtest --server http://127.0.0.1:9 --space x --listeners 1 --plot out.png": 2,
        "simulate --listeners 100 --plot out.png": 2,
        "report nothing --data-dir data": 1,
    }
    done = run([installed.bin("python"), "-c", PLOTTERS, json.dumps([c.split() for c in commands])], tmp_path,
               installed.env, timeout=60)
    said = json.loads(done.stdout)
    for command, status in commands.items():
        assert said[command][0] == status and "pip install 'amphi[plots]'" in said[command][1], (command, said[command])
    assert not list(tmp_path.iterdir()), "refused before doing anything"


@pytest.fixture(scope="module")
def demo(installed: Installed) -> Iterator[tuple[str, str, Path]]:
    """``amphi serve --demo`` of the installed wheel: its base URL, the demo Space, its log."""
    port = free_port()
    log = installed.cwd.parent / "serve.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([installed.bin("amphi"), "serve", "--port", str(port), "--data-dir", "data",
                                 "--segment-parts", TEST_SEGMENT_PARTS, "--demo"], cwd=installed.cwd,
                                env=installed.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def live() -> str | None:
            if proc.poll() is not None:
                pytest.fail(f"amphi serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                spaces = httpx.get(f"{base}/api/spaces", timeout=1).json()
            except httpx.TransportError:
                return None
            return next((s["id"] for s in spaces if s["state"] == "live"), None)

        yield base, wait_for("the installed node's demo Space to be live", live, START_TIMEOUT_S), log
    finally:
        stop_group(proc, 15)


def test_the_installed_node_serves_the_web_assets(demo: tuple[str, str, Path]) -> None:
    base, _, log = demo
    for name, (rel, ctype) in assets.VENDOR.items():
        path = ROUTES[name].template
        r = httpx.get(base + path, timeout=5)
        assert r.status_code == 200, (path, r.text[:300])
        assert r.headers["content-type"].split(";")[0] == ctype
        assert r.content == (NODE_MODULES / rel).read_bytes(), path
    assert "web assets missing" not in log.read_text()


def test_the_installed_node_serves_every_page_and_static_file(demo: tuple[str, str, Path]) -> None:
    base, space, _ = demo
    for path, status in (("/", 200), (f"/s/{space}", 200), (f"/s/{space}/host", 200), ("/dashboard", 401)):
        r = httpx.get(base + path, timeout=5)
        assert r.status_code == status and r.headers["content-type"].startswith("text/html"), path
    for file in (REPO / "src" / "amphi" / "web" / "static").iterdir():
        r = httpx.get(f"{base}/static/{file.name}", timeout=5)
        assert r.status_code == 200 and r.content == file.read_bytes(), file.name


def test_chromium_plays_the_installed_demo(demo: tuple[str, str, Path], page: Page) -> None:
    base, space, _ = demo
    page.goto(f"{base}/s/{space}")
    page.wait_for_selector("#state.live")
    assert page.text_content("#title") == "Amphi demo: a tune on a loop"
    assert_plays(page)
