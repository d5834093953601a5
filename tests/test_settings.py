"""Settings (docs/config.md): every field of the config dataclasses from a TOML file, from
AMPHI_* variables and (serve's) flags, in that order of precedence, checked in one place;
``amphi config show`` and the example file. The CLI runs in process (click's runner); the
real-process test is tests/integration/test_config_file.py."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from amphi.cli import main
from amphi.cli_config import FLAGS
from amphi.core import settings
from amphi.core.config import Config
from amphi.core.settings import Given, SettingsError, build, from_env, from_file, to_toml, value_of

ROOT = Path(__file__).resolve().parents[1]

# values a check would refuse if made up from the type alone
SAMPLES: dict[str, Any] = {
    "edges": ("http://edge-a:6081", "http://edge-b:6081"),
    "defense.trusted_proxies": ("10.0.0.0/8", "2001:db8::/32"),
    "defense.pow_mode": "on",
    "ice.addresses": ("192.0.2.7", "2001:db8::7"),
    "ice.announced": ("203.0.113.7", "2001:db8::8"),
    "ice.stun": ("stun:stun.example.org:3478",),
    "ice.turn": ("turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"),
    "node_id": "node-7",
}


def sample(s: settings.Setting) -> Any:
    """A value for ``s`` that is not its default and passes its checks."""
    if s.path in SAMPLES:
        return SAMPLES[s.path]
    inner, _ = settings._unwrap(s.hint)
    element = settings._element(inner)
    if element is not None:
        return ("a1", "b2")
    d = s.default
    if inner is bool:
        return not d
    if inner is int:
        return d + 1
    if inner is float:
        return d + 0.5
    if inner is bytes:
        return b"s3cret-bytes"
    if inner is Path:
        return Path(f"/srv/{s.key}")
    return f"{s.key}-value"


def text_of(value: Any) -> str:
    """How an AMPHI_ variable spells ``value``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def toml_of(values: dict[str, Any]) -> str:
    by_table: dict[str, list[str]] = {}
    for path, value in values.items():
        table, _, key = path.rpartition(".")
        by_table.setdefault(table, []).append(f"{key} = {settings.toml_value(value)}")
    out = by_table.pop("", [])
    for table, lines in by_table.items():
        out += [f"[{table}]", *lines]
    return "\n".join(out) + "\n"


ALL = {path: sample(s) for path, s in settings.settings().items()}


def test_every_dataclass_field_is_a_setting() -> None:
    """Found from the dataclasses: nested tables and their fields, and nothing else."""
    known = settings.settings()
    assert {"http.port", "http.tls_cert", "media.sound.target_lufs", "admission.secret", "ice.turn_ttl_s",
            "cluster.redis_url", "data_dir", "node_id", "web_assets_dir"} <= set(known)
    assert list(settings.tables()) == ["", "http", "media", "media.sound", "admission", "stage", "defense",
                                       "cluster", "ice", "keys"]

    def leaves(obj: Any, prefix: str = "") -> set[str]:
        out = set()
        for f in dataclasses.fields(obj):
            path = f"{prefix}{f.name}"
            value = getattr(obj, f.name)
            out |= leaves(value, path + ".") if dataclasses.is_dataclass(value) else {path}
        return out

    assert set(known) == leaves(Config())
    assert len({s.env for s in known.values()}) == len(known)  # no two settings share a variable


def test_every_setting_from_the_file() -> None:
    cfg = build(from_file(toml_of(ALL), "all.toml"))
    for path, value in ALL.items():
        assert value_of(cfg, path) == value, path


def test_every_setting_from_the_environment() -> None:
    env = {s.env: text_of(ALL[path]) for path, s in settings.settings().items()}
    cfg = build(from_env(env))
    for path, value in ALL.items():
        assert value_of(cfg, path) == value, path


def test_an_int_where_a_float_is_wanted_and_empty_for_unset() -> None:
    cfg = build(from_file('[media.sound]\ntarget_lufs = -16\n[http]\npublic_url = ""\n', "f.toml"))
    assert cfg.media.sound.target_lufs == -16.0 and isinstance(cfg.media.sound.target_lufs, float)
    assert cfg.http.public_url is None
    assert build(from_env({"AMPHI_CLUSTER_REDIS_URL": "", "AMPHI_EDGES": ""})).cluster.redis_url is None


@pytest.mark.parametrize(("text", "message"), [
    ('[http]\nport = "8000"\n', "f.toml: [http] port: expected an integer, got a string ('8000')"),
    ("[http]\nport = 80.5\n", "f.toml: [http] port: expected an integer, got a float (80.5)"),
    ("[admission]\nmax_listeners = true\n", "f.toml: [admission] max_listeners: expected an integer, got a boolean"),
    ('[media.sound]\nenabled = "no"\n', "f.toml: [media.sound] enabled: expected a boolean (true or false), got a "
                                        "string"),
    ('edges = "http://e"\n', "f.toml: edges: expected an array of strings, got a string"),
    ("[defense]\ntrusted_proxies = [1]\n", "f.toml: [defense] trusted_proxies: expected an array of strings"),
    ("http = 3\n", "f.toml: 'http' in the top level is the table [http], not an integer"),
])
def test_a_wrong_type_is_named(text: str, message: str) -> None:
    with pytest.raises(SettingsError) as e:
        from_file(text, "f.toml")
    assert str(e.value).startswith(message)


@pytest.mark.parametrize(("text", "message"), [
    ("[http]\nprot = 1\n", "f.toml: unknown key 'prot' in [http]; did you mean 'port'?"),
    ("[media.sound]\ntarget_lufd = 1\n", "f.toml: unknown key 'target_lufd' in [media.sound]; did you mean "
                                         "'target_lufs'?"),
    ("[media.sond]\nenabled = true\n", "f.toml: unknown key 'sond' in [media]; did you mean 'sound'?"),
    ("[htpp]\nport = 1\n", "f.toml: unknown key 'htpp' in the top level; did you mean 'http'?"),
    ("nodeid = 'a'\n", "f.toml: unknown key 'nodeid' in the top level; did you mean 'node_id'?"),
    ("[admission]\nzzz = 1\n", "f.toml: unknown key 'zzz' in [admission]"),
])
def test_an_unknown_key_is_named_with_its_table(text: str, message: str) -> None:
    with pytest.raises(SettingsError) as e:
        from_file(text, "f.toml")
    assert str(e.value) == message


def test_malformed_toml_says_where() -> None:
    with pytest.raises(SettingsError) as e:
        from_file("[http]\nport = 8000\nhost = \n", "f.toml")
    assert re.fullmatch(r"f\.toml: not TOML: line 3, column \d+: .+", str(e.value)), e.value


def test_the_environment() -> None:
    with pytest.raises(SettingsError, match=r"^\$AMPHI_HTTP_PROT names no setting; did you mean 'AMPHI_HTTP_PORT'\?"):
        from_env({"AMPHI_HTTP_PROT": "1"})
    with pytest.raises(SettingsError, match=r"^\$AMPHI_HTTP_PORT: expected an integer, got 'eighty'$"):
        from_env({"AMPHI_HTTP_PORT": "eighty"})
    with pytest.raises(SettingsError, match=r"^\$AMPHI_DEMO: expected a boolean"):
        from_env({"AMPHI_DEMO": "maybe"})
    # not settings: ignored (other programs' variables, and AMPHI_ ones that are not settings)
    assert from_env({"HOME": "/root", "AMPHI_CONFIG": "x.toml", "AMPHI_UPDATE_GOLDEN": "1"}) == {}
    # the names that worked before: AMPHI_SECRET (an alias), AMPHI_OPERATOR_KEY (the setting's own name)
    cfg = build(from_env({"AMPHI_SECRET": "old", "AMPHI_OPERATOR_KEY": "op", "AMPHI_NODE_MODULES": "/nm"}))
    assert (cfg.admission.secret, cfg.operator_key, cfg.web_assets_dir) == (b"old", "op", Path("/nm"))
    cfg = build(from_env({"AMPHI_SECRET": "old", "AMPHI_ADMISSION_SECRET": "new"}))
    assert cfg.admission.secret == b"new"  # a setting's own name wins over its alias
    cfg = build(from_env({"AMPHI_ICE_ADDRESSES": "192.0.2.1, 192.0.2.2", "AMPHI_MEDIA_SOUND_TARGET_LUFS": "-16"}))
    assert cfg.ice.addresses == ("192.0.2.1", "192.0.2.2") and cfg.media.sound.target_lufs == -16.0


def test_layers_later_wins() -> None:
    file = from_file("[http]\nport = 1001\nhost = '0.0.0.0'\n[admission]\nmax_listeners = 50\n", "f.toml")
    env = from_env({"AMPHI_HTTP_PORT": "1002", "AMPHI_ADMISSION_MAX_LISTENERS": "60"})
    flags = {"http.port": Given(1003, "--port")}
    cfg = build(file, env, flags)
    assert (cfg.http.port, cfg.http.host, cfg.admission.max_listeners) == (1003, "0.0.0.0", 60)


@pytest.mark.parametrize(("text", "message"), [
    ("node_id = 'a b'\n", "f.toml: node_id: 1-32 letters, digits, '_' or '-'"),
    ("[defense]\ntrusted_proxies = ['10.0.0.0/8', 'nope']\n", "f.toml: [defense] trusted_proxies: 'nope' does not"),
    ("[defense]\npow_mode = 'sometimes'\n", "f.toml: [defense] pow_mode: 'sometimes' is not one of on, off, auto"),
    ("[media]\nparts_per_segment = 40\n", "f.toml: [media] parts_per_segment: 40 is out of range (2 to 16)"),
    ("[http]\nport = 70000\n", "f.toml: [http] port: 70000 is out of range (0 to 65535)"),
    ("[admission]\ntoken_ttl_s = 1\n", "f.toml: [admission] token_ttl_s: 1.0 is out of range (at least 2)"),
    ("[admission]\nmax_listeners = 5\nmin_listeners = 8\n",
     "f.toml: [admission] min_listeners: 8 is above admission.max_listeners (5, from f.toml: [admission] "
     "max_listeners)"),
    ("[http]\ntls_cert = 'c.pem'\n", "f.toml: [http] tls_cert: TLS needs both http.tls_cert and http.tls_key"),
    ("[ice]\nturn = ['turn:t:3478']\n", "f.toml: [ice] turn: TURN URLs need the TURN server's shared secret"),
    ("[ice]\naddresses = ['speaker.example.org']\n", "f.toml: [ice] addresses: 'speaker.example.org' is not an IP address"),
    ("[ice]\nstun = ['http://x']\n", "f.toml: [ice] stun: 'http://x' is not a STUN URL"),
])
def test_checks_apply_to_the_file(text: str, message: str) -> None:
    with pytest.raises(SettingsError) as e:
        build(from_file(text, "f.toml"))
    assert str(e.value).startswith(message), e.value


def test_checks_apply_to_the_environment_and_derived_values() -> None:
    with pytest.raises(SettingsError, match=r"^\$AMPHI_NODE_ID: 1-32 letters"):
        build(from_env({"AMPHI_NODE_ID": "no/slash"}))
    with pytest.raises(SettingsError, match=r"^\$AMPHI_MEDIA_PARTS_PER_SEGMENT: 1 is out of range"):
        build(from_env({"AMPHI_MEDIA_PARTS_PER_SEGMENT": "1"}))
    # the adaptive limit's floor follows a small ceiling, as `serve --max-listeners 3` always did
    cfg = build(from_env({"AMPHI_ADMISSION_MAX_LISTENERS": "3"}))
    assert (cfg.admission.max_listeners, cfg.admission.min_listeners) == (3, 3)
    assert build(from_file("edges = ['http://e:1/']\n", "f")).edges == ("http://e:1",)


def test_round_trip() -> None:
    """What config show prints, --config takes back: the same Config. Secrets are not printed
    (a comment says whether one is set); they come back from elsewhere, e.g. AMPHI_* variables."""
    for cfg in (Config(), build(from_file(toml_of(ALL), "all.toml"))):
        text = to_toml(cfg)
        for secret in settings.SECRETS:
            assert re.search(rf"^# {secret.rpartition('.')[2]}: (set \(not shown\)|unset)$", text, re.M), secret
        assert "s3cret" not in text and "operator_key-value" not in text and "turn_secret-value" not in text
        secrets = from_env({settings.settings()[p].env: text_of(value_of(cfg, p)) for p in settings.SECRETS
                            if value_of(cfg, p) is not None})
        assert build(from_file(text, "shown.toml"), secrets) == cfg


def test_the_example_file_is_up_to_date() -> None:
    """amphi.example.toml is `amphi config example`: regenerate it when a setting changes."""
    assert (ROOT / "amphi.example.toml").read_text() == settings.example(), \
        "amphi.example.toml is stale: amphi config example > amphi.example.toml"


def test_the_example_uncommented_is_the_defaults() -> None:
    text = settings.example()
    assert tomllib.loads(text) == {t: {} for t in settings.tables() if t and "." not in t} | {
        "media": {"sound": {}}}  # valid TOML as it is: tables, every setting commented out
    uncommented = "\n".join(re.sub(r"^# (\w+ = .*?)(  #.*)?$", r"\1", line) if "(computed" not in line else ""
                            for line in text.splitlines())
    given = from_file(uncommented, "example")
    assert set(given) == {p for p, s in settings.settings().items() if not s.computed}
    assert build(given) == Config()


# -- the CLI: flags, config show --------------------------------------------------------------

SERVE_FLAGS = ("--host", "--port", "--data-dir", "--public-url", "--demo", "--max-listeners", "--admit-rate",
               "--admit-burst", "--token-ttl", "--seat-grace", "--ticket-hold", "--max-waiting", "--speaker-timeout",
               "--pow", "--pow-bits", "--trusted-proxy", "--join-rate", "--address-join-rate",
               "--address-join-burst", "--header-timeout", "--log-format", "--operator-key", "--node-id", "--edge",
               "--redis", "--segment-parts", "--loudness-target", "--dead-air", "--no-sound-guard",
               "--ice-address", "--ice-announce", "--stun", "--turn", "--turn-secret", "--turn-ttl", "--tls-cert", "--tls-key",
               "--config")


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_serve_keeps_every_flag() -> None:
    out = run("serve", "--help").output
    for flag in SERVE_FLAGS:
        assert re.search(rf"^\s+{re.escape(flag)}\b", out, re.M), flag
    flat = " ".join(out.split())
    assert "[default: 8000; 0<=x<=65535]" in flat and "[default: 12; 2<=x<=16]" in flat  # defaults still shown
    assert len({f.path for f in FLAGS if not f.invert}) == len([f for f in FLAGS if not f.invert])


def test_flags_override_file_and_environment_only_when_given(tmp_path: Path) -> None:
    f = tmp_path / "amphi.toml"
    f.write_text("[http]\nport = 9001\nhost = '127.0.0.2'\n[admission]\nmax_listeners = 50\n"
                 "[media]\nparts_per_segment = 9\n[media.sound]\nenabled = true\n")
    env = {"AMPHI_ADMISSION_MAX_LISTENERS": "60", "AMPHI_HTTP_HOST": "127.0.0.3"}
    r = run("config", "show", "--json", "--config", str(f), "--host", "127.0.0.4", "--no-sound-guard",
            "--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "192.0.2.0/24", env=env)
    assert r.exit_code == 0, r.output
    shown = json.loads(r.output)
    assert shown["http"]["port"] == 9001  # --port was not given: its default does not override the file
    assert shown["http"]["host"] == "127.0.0.4"  # flag > env > file
    assert shown["admission"]["max_listeners"] == 60  # env > file
    assert shown["media"]["parts_per_segment"] == 9
    assert shown["media"]["sound"]["enabled"] is False
    assert shown["defense"]["trusted_proxies"] == ["10.0.0.0/8", "192.0.2.0/24"]


def test_config_show_redacts_and_round_trips(tmp_path: Path) -> None:
    f = tmp_path / "amphi.toml"
    f.write_text("operator_key = 'op-secret'\n[admission]\nsecret = 'tok-secret'\n"
                 "[ice]\nturn = ['turn:t:3478']\nturn_secret = 'turn-secret'\n")
    r = run("config", "show", "--config", str(f), "--port", "8123")
    assert r.exit_code == 0 and "secret'" not in r.output and "-secret" not in r.output, r.output
    assert "# operator_key: set (not shown)" in r.output
    back = tmp_path / "shown.toml"
    back.write_text(r.output.replace("# turn_secret: set (not shown)", 'turn_secret = "again"'))
    r2 = run("config", "show", "--json", "--config", str(back))
    assert r2.exit_code == 0, r2.output
    shown = json.loads(r2.output)
    assert shown["http"]["port"] == 8123 and shown["ice"]["turn"] == ["turn:t:3478"]
    assert shown["ice"]["turn_secret"] == "(redacted)" and shown["operator_key"] is None


@pytest.mark.parametrize(("args", "env", "message"), [
    (("--config", "{d}/missing.toml"), {}, "Error: --config {d}/missing.toml: No such file or directory"),
    (("--config", "{d}/bad.toml"), {}, "Error: {d}/bad.toml: not TOML: line 2, column"),
    (("--config", "{d}/unknown.toml"), {}, "Error: {d}/unknown.toml: unknown key 'max_listener' in [admission]; "
                                           "did you mean 'max_listeners'?"),
    ((), {"AMPHI_ADMISSION_MAX_LISTENER": "5"}, "Error: $AMPHI_ADMISSION_MAX_LISTENER names no setting"),
    (("--node-id", "a.b"), {}, "Error: --node-id: 1-32 letters, digits, '_' or '-'"),
    (("--trusted-proxy", "300.1.1.1/8"), {}, "Error: --trusted-proxy: '300.1.1.1/8' does not appear"),
    (("--config", "{d}/unknown.toml", "--port", "x"), {}, "Usage:"),  # click's own: a flag's type
])
def test_errors_are_one_line(tmp_path: Path, args: tuple[str, ...], env: dict[str, str], message: str) -> None:
    (tmp_path / "bad.toml").write_text("[http]\nport = = 3\n")
    (tmp_path / "unknown.toml").write_text("[admission]\nmax_listener = 5\n")
    r = run("config", "show", *(a.format(d=tmp_path) for a in args), env=env)
    assert r.exit_code in (1, 2)
    assert r.output.startswith(message.format(d=tmp_path)), r.output
    if not message.startswith("Usage"):
        assert r.output.count("\n") == 1, r.output


def test_the_docs_list_every_flag() -> None:
    doc = (ROOT / "docs" / "config.md").read_text()
    rows = set(re.findall(r"^\| `(--[a-z-]+)` \| `([a-z_.]+)`", doc, re.M))
    assert rows == {(f.decl, f.path) for f in FLAGS}, "docs/config.md's table of flags is not FLAGS"


def test_the_example_file_is_accepted_as_it_is() -> None:
    plain = run("config", "show", env={"AMPHI_CONFIG": ""})
    example = run("config", "show", "--config", str(ROOT / "amphi.example.toml"))
    assert example.exit_code == 0 and example.output == plain.output, example.output
