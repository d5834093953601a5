"""Amphi's one build step beyond pyproject.toml: the pages' npm libraries go into the package
(docs/install.md). Everything else about the package is declared in pyproject.toml.

``build_py`` copies the files the node serves (``amphi.web.assets``: Shaka Player, hls.js,
uPlot, with their licences) into ``amphi/web/vendor/`` of the build, taking them from

  1. ``src/amphi/web/vendor/`` when it holds them all (an sdist carries them, see ``sdist``);
  2. else ``node_modules/`` beside this file, after running ``npm ci`` if they are missing there.
     The versions must be package-lock.json's: a stale node_modules stops the build.

An editable install (``pip install -e``) copies nothing: a source checkout serves node_modules.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist
from setuptools.errors import ExecError, FileError

ROOT = Path(__file__).resolve().parent
VENDOR = Path("amphi", "web", "vendor")  # inside the package tree (src/ here, the build directory there)


def _assets() -> ModuleType:
    """amphi/web/assets.py, the table of served files (standard library only, so loaded by path)."""
    spec = importlib.util.spec_from_file_location("_amphi_assets", ROOT / "src" / "amphi" / "web" / "assets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _complete(at: Path, names: list[str]) -> bool:
    return all((at / name).is_file() for name in names)


def _npm_ci() -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise FileError(
            "building Amphi's package needs the pages' npm libraries (Shaka Player, hls.js, uPlot): "
            f"node_modules/ in {ROOT} lacks them and npm is not on PATH. Install Node.js and npm "
            "(Debian: apt-get install npm) or run `npm ci` there, or build from an sdist, which carries them "
            "(docs/install.md).")
    print(f"amphi build: running npm ci in {ROOT}")
    done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=ROOT)
    if done.returncode != 0:
        raise ExecError(f"npm ci in {ROOT} failed with exit status {done.returncode}")


def _locked_versions(assets: ModuleType, node_modules: Path) -> dict[str, str]:
    """Each package's version in node_modules, which must be package-lock.json's."""
    locked = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    versions = {}
    for name in assets.packages():
        want = locked.get(f"node_modules/{name}", {}).get("version")
        have = json.loads((node_modules / name / "package.json").read_text()).get("version")
        if want is None or have != want:
            raise FileError(f"node_modules/{name} is {have}, package-lock.json says {want}: run `npm ci` in {ROOT}")
        versions[name] = have
    return versions


def vendor_files() -> tuple[Path, dict[str, str], list[str]]:
    """Where this build takes the npm files from, their packages' versions, and the files."""
    assets = _assets()
    names = assets.files()
    carried = ROOT / "src" / VENDOR
    if _complete(carried, names) and (carried / assets.VERSIONS).is_file():
        return carried, json.loads((carried / assets.VERSIONS).read_text()), names
    node_modules = ROOT / "node_modules"
    if not _complete(node_modules, names):
        _npm_ci()
        if not _complete(node_modules, names):
            missing = [n for n in names if not (node_modules / n).is_file()]
            raise FileError(f"npm ci did not install {', '.join(missing)}: check package.json")
    return node_modules, _locked_versions(assets, node_modules), names


def copy_vendor(dest: Path) -> list[Path]:
    """The npm files and versions.json into ``dest`` (an amphi/web/vendor directory); the paths written."""
    source, versions, names = vendor_files()
    written = []
    for name in names:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target)
        written.append(target)
    target = dest / _assets().VERSIONS
    target.write_text(json.dumps(versions, indent=1, sort_keys=True) + "\n")
    written.append(target)
    print(f"amphi build: web assets from {source} ({', '.join(f'{k} {v}' for k, v in versions.items())})")
    return written


class BuildPy(build_py):
    """build_py, plus the npm files into the built package (not for an editable install)."""

    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            copy_vendor(Path(self.build_lib) / VENDOR)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs
        names = [*_assets().files(), _assets().VERSIONS]
        return outputs + [str(Path(self.build_lib) / VENDOR / name) for name in names]


class Sdist(sdist):
    """sdist, plus the npm files under src/amphi/web/vendor/: a wheel builds from it without npm."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        copy_vendor(Path(base_dir) / "src" / VENDOR)


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
