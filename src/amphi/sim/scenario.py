"""Where a simulation's settings come from, weakest first: the defaults, a scenario file
(``scenarios/<name>.toml`` or a path), a loadtest's JSON (``--calibrate``), and the
command line. All of them are plain dicts of ``SimConfig`` fields, merged in that order;
``admission`` is a table of ``AdmissionConfig`` fields (per API node)."""

from __future__ import annotations

import json
import tomllib
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from amphi.core.config import AdmissionConfig
from amphi.sim.model import ARRIVALS, SimConfig, SimError

SCENARIOS_DIR = Path(__file__).parent / "scenarios"
_SIM_FIELDS = {f.name for f in fields(SimConfig)}
_ADMISSION_FIELDS = {f.name for f in fields(AdmissionConfig)} - {"secret"}


def scenario_names() -> list[str]:
    return sorted(p.stem for p in SCENARIOS_DIR.glob("*.toml"))


def load_scenario(name: str) -> dict[str, Any]:
    """A shipped scenario by name, or a TOML file by path. Its ``[scenario]`` table (title,
    what it models) is kept apart under ``"about"``."""
    path = Path(name) if name.endswith(".toml") else SCENARIOS_DIR / f"{name}.toml"
    if not path.is_file():
        raise SimError(f"no scenario {name!r}: one of {', '.join(scenario_names())}, or a .toml file")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SimError(f"{path}: {e}") from None
    about = data.pop("scenario", {})
    _check_keys(data, str(path))
    return {**data, "about": about}


def calibrate(path: str | Path) -> dict[str, Any]:
    """A real run's settings and measurements as ``SimConfig`` fields: the same listeners,
    arrivals (same profile, window and seed, so the same arrival times), length and player;
    the node's admission settings as it reported them; its CPU per request; the quickest
    median answer of any second (a request's time with nothing queued)."""
    try:
        r = json.loads(Path(path).read_text())
        settings = r["settings"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SimError(f"--calibrate {path}: not an amphi loadtest --json file ({e})") from None
    if r.get("protocol") != "amphi":
        raise SimError(f"--calibrate {path}: a --protocol amphi run is needed (this one is {r.get('protocol')})")
    if r.get("profile") not in ARRIVALS:
        raise SimError(f"--calibrate {path}: profile {r.get('profile')!r} cannot be simulated; one of {', '.join(ARRIVALS)}")
    admission = r.get("server_admission")
    if not isinstance(admission, dict):
        raise SimError(f"--calibrate {path}: the run did not record the node's admission settings (server_admission)")
    out: dict[str, Any] = {
        "listeners": int(r["listeners"]), "arrival": r["profile"], "arrival_s": float(settings["ramp_s"]),
        "listen_s": float(settings["duration_s"]) - float(settings["ramp_s"]), "seed": int(settings["seed"]),
        "player": settings["player"], "request_timeout_s": float(settings["request_timeout_s"]),
        "api_nodes": 1, "edges": 0, "max_clients": max(int(r["listeners"]), SimConfig.max_clients),
        "admission": {k: v for k, v in admission.items() if k in _ADMISSION_FIELDS},
    }
    if r.get("server_cpu_per_request_s"):
        out["request_cost_s"] = out["media_cost_s"] = float(r["server_cpu_per_request_s"])
    medians = [row["join_p50_s"] for row in r.get("timeline", []) if row.get("join_p50_s")]
    if medians:
        out["rtt_s"] = min(medians)
    return out


def build(*layers: dict[str, Any]) -> SimConfig:
    """``SimConfig`` from layers of fields, later ones winning (``admission`` merges field by field)."""
    merged: dict[str, Any] = {}
    admission: dict[str, Any] = {}
    for layer in layers:
        _check_keys({k: v for k, v in layer.items() if k != "about"}, "settings")
        for k, v in layer.items():
            if k == "admission":
                admission.update(v)
            elif k != "about" and v is not None:
                merged[k] = v
    if "listeners" not in merged:
        raise SimError("how many listeners? --listeners N (or a --scenario / --calibrate that says)")
    try:
        adm = replace(AdmissionConfig(), **admission)
        cfg = SimConfig(**{**merged, "admission": adm})
    except TypeError as e:
        raise SimError(str(e)) from None
    cfg.check()
    return cfg


def _check_keys(data: dict[str, Any], where: str) -> None:
    unknown = set(data) - _SIM_FIELDS
    if unknown:
        raise SimError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
    bad = set(data.get("admission", {})) - _ADMISSION_FIELDS
    if bad:
        raise SimError(f"{where}: unknown admission setting(s) {', '.join(sorted(bad))}")
