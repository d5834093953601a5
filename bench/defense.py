"""Defense: are admitted listeners kept whole and legit joins answered while floods run, and
does the detector tell a surge from an attack? (docs/defense.md)

    .venv/bin/python bench/defense.py [--only cost,flood,slowloris,detector] [--listeners 2000]
        [--legit-ramp 40] [--flood-via edge|node] [--player ll|segments] [--slowloris 5000]
        [--pow-bits 8] [--cost-seconds 8] [--warm 12] [--tail 15] [--small] [--json OUT] [--plot OUT.png]

Each scenario starts its own ``amphi serve`` on a free 127.0.0.1 port (a fresh detector),
puts one Space live and drives it with ``amphi loadtest`` subprocesses (real HTTP, attackers
from 127.200.0.0/16, listeners each from its own 127.x.y.z), while this process reads the
Space's status (the detector's label) twice a second.

(cost) a refusal vs an admission, in node CPU per join over HTTP (wrk; see scenario_cost).
(a) flood: ``--listeners`` join over ``--legit-ramp`` s and stay; from a quarter of the way in,
    a join flood at 10x the legit join rate and a bad-token media flood at the same rate, for
    half the ramp. By default everyone meets one Varnish edge in front of the node, as in
    production (``--flood-via node``: the node alone): media and bad tokens stop at the edge,
    joins pass through it to the node. Bars: every listener admitted with 0 stalls, legit join
    answers p99 <= 1 s, every bad token refused, and at most 1 % of the flood's joins let
    through (suspect addresses must solve the proof of work before any verdict).
(b) slowloris: ``--slowloris`` sockets held open with unfinished request heads (reopened as the
    node cuts them), while 200 listeners join. Bar: join answers p99 <= 1 s.
(c) detector: normal (a trickle), surge (1,500 listeners in 5 s), attack (a join flood alone),
    both (the surge and the flood together). Bar: the right label within 10 s of onset, and a
    normal run never labelled anything else.

The load generator solves proof-of-work challenges in Python on the same cores it measures,
so the node runs with ``--pow-bits`` 8 here (pressure adds up to 4 more); the browser's cost at
the default 16 bits is what tests/web/test_pow_page.py exercises. The machine is shared: the
table prints the CPU figures beside the bars. Exit 0 if every bar is met, 1 if one is missed,
2 on an error. Everything goes to 127.0.0.0/8 and stops by itself (about 4 minutes).

``--small`` runs the flood alone, in about 25 s, with the same bars: 60 LL-HLS listeners over
6 s through the edge, the join and bad-token floods at 10x their rate, on a Space 5 s old, 4 s
of listening after the ramp. (The detector's scenarios take 20 s each and slowloris 30 s: run
them with ``--only``.) One bar is relaxed: half the flood's joins may be let through, since a
3 s flood is mostly the first joins of each source, let through before it becomes a suspect.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import HOST, NodeProcess, amphi_command, free_port, kill_group, run, small_mode, start_space  # noqa: E402

from amphi.edge.varnish import Edge  # noqa: E402
from amphi.edge.vcl import Backend, EdgeSpec  # noqa: E402
from amphi.loadtest.machine import ProcessCpu  # noqa: E402

ONSET_LIMIT_S = 10.0
WARM_S = 12.0  # (a): the Space's age when the listeners start arriving
SECRET = "d" * 64  # the node's token key (AMPHI_SECRET), which the edge is given to check tokens
LABELS = ("normal", "surge", "attack", "surge+attack")


def loadtest(node: NodeProcess, space: str, out: Path, *args: str, server: str | None = None) -> subprocess.Popen[bytes]:
    """``amphi loadtest`` against the node, or against ``server`` (an edge) with the node's CPU measured."""
    target = ("--server", node.url) if server is None else ("--server", server, "--server-pid", str(node.pid))
    cmd = amphi_command("loadtest", *target, "--space", space, "--json", str(out), "--quiet", *args)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen[bytes], out: Path, timeout_s: float) -> dict:
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise RuntimeError("a loadtest did not finish in time") from None
    if proc.returncode != 0:
        raise RuntimeError(f"loadtest failed:\n{output.decode(errors='replace')[-2000:]}")
    return json.loads(out.read_text())


class Watcher:
    """Reads the Space's detector label twice a second, in a thread."""

    def __init__(self, node: NodeProcess, space: str) -> None:
        self.url = f"{node.url}/api/spaces/{space}"
        self.samples: list[tuple[float, str, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        with httpx.Client(timeout=5.0) as client:
            while not self._stop.wait(0.5):
                try:
                    d = client.get(self.url).json()["detector"]
                except (httpx.HTTPError, ValueError, KeyError):
                    continue
                self.samples.append((time.time(), d["label"], d))

    def first_with(self, sign: str, after: float) -> float | None:
        """Seconds after ``after`` until a label with ``sign`` in it (attack, surge+attack)."""
        return next((t - after for t, lab, _ in self.samples if t >= after and sign in lab), None)

    def first(self, label: str, after: float) -> float | None:
        return next((t - after for t, lab, _ in self.samples if t >= after and lab == label), None)


def t0_of(result: dict) -> float:
    """The loadtest's T0 (wall clock)."""
    return float(result["t0_unix"])


def scenario_flood(args: argparse.Namespace, tmp: Path) -> dict:
    legit_rate = args.listeners / args.legit_ramp
    flood_rate = 10 * legit_rate
    start, length = args.legit_ramp / 4, args.legit_ramp / 2
    duration = args.legit_ramp + args.tail
    node_args = ["--max-listeners", str(args.listeners * 4), "--pow-bits", str(args.pow_bits)]
    edge_port = free_port()
    if args.flood_via == "edge":  # listeners and attackers meet the edge; the node trusts its X-Forwarded-For
        node_args += ["--edge", f"http://{HOST}:{edge_port}", "--trusted-proxy", f"{HOST}/32"]
    with NodeProcess(args=node_args) as node:
        space = start_space(node.url, "flood", join=False).id
        # the flood meets a Space that has been live for a while: a segment player that joins a Space
        # younger than its third segment starts with less than one segment of margin
        time.sleep(args.warm)
        edge = None
        if args.flood_via == "edge":
            spec = EdgeSpec.signed("edge1", SECRET, (Backend.parse("origin", node.url),))
            edge = Edge(spec, tmp / "edge", HOST, edge_port).start()
        try:
            assert edge is None or edge.proc is not None
            edge_cpu = ProcessCpu(edge.proc.pid) if edge is not None and edge.proc is not None else None
            c0 = edge_cpu.cpu_s() if edge_cpu else 0.0
            t0 = time.monotonic()
            server = edge.url if edge is not None else None
            with Watcher(node, space) as w:
                legit = loadtest(node, space, tmp / "a.json", "--listeners", str(args.listeners), "--profile", "ramp",
                                 "--ramp", str(args.legit_ramp), "--duration", str(duration), "--procs", "2",
                                 "--player", args.player,
                                 "--attack", "join-flood", "--attack-rate", f"{flood_rate:g}", "--attack-start",
                                 f"{start:g}", "--attack-duration", f"{length:g}", "--attack-sources", "64",
                                 server=server)
                bad = loadtest(node, space, tmp / "b.json", "--listeners", "0", "--duration", str(duration), "--ramp",
                               "1", "--attack", "bad-token", "--attack-rate", f"{flood_rate:g}", "--attack-start",
                               f"{start:g}", "--attack-duration", f"{length:g}", "--attack-sources", "64", "--seed", "2",
                               server=server)
                r = finish(legit, tmp / "a.json", duration + 120)
                b = finish(bad, tmp / "b.json", 60)
            edge_pct = round(100 * (edge_cpu.cpu_s() - c0) / (time.monotonic() - t0), 1) if edge_cpu else None
        finally:
            if edge is not None:
                edge.stop()
        defense = httpx.get(f"{node.url}/api/node", timeout=5).json()["defense"]
        log = node.log_path.read_text()
    pow_on = w.first_with("attack", t0_of(r) + start)
    flood, tokens = r["attack"], b["attack"]
    return {
        "via": args.flood_via, "player": args.player,
        "legit_join_rate": round(legit_rate, 1), "flood_rate": flood_rate, "listeners": args.listeners,
        "admitted": r["admitted"], "failed": r["failed"], "stalled_listeners": r["stalled_listeners"],
        "join_p99_s": r["join_p99_s"], "first_audio_p99_s": r["first_audio_p99_s"], "pow_solved": r["pow_solved"],
        "stall_seconds_total": r["stall_seconds_total"], "errors_by_kind": r["errors_by_kind"],
        "flood": flood, "bad_token": tokens, "attack_label_after_s": pow_on,
        "challenges_to_suspects": defense["challenges"]["to_suspects"],
        "server_cpu_pct": r["server_cpu_pct"], "edge_cpu_pct": edge_pct, "generator_cpu_pct": r["generator_cpu_pct"],
        "other_cpu_pct": r.get("other_processes_cpu_pct"), "pow_logged": "proof of work on" in log,
        "labels": [(round(t - t0_of(r), 1), lab) for t, lab, _ in w.samples],
        "timeline": [(row["t"], row["join_p99_s"], row["stalled_now"]) for row in r["timeline"]],
        "ok": {"0 stalls": r["stalled_listeners"] == 0,
               "every listener admitted": r["admitted"] == args.listeners,
               "legit joins answered, p99 <= 1 s": r["never_answered"] == 0 and (r["join_p99_s"] or 9) <= 1.0,
               "bad tokens all refused": tokens["accepted"] == 0 and tokens["sent"] > 0,
               f"flood joins seated <= {args.flood_share:.0%} ({flood['accepted']} of {flood['sent']})":
                   flood["sent"] > 0 and flood["accepted"] <= flood["sent"] * args.flood_share},
    }


def scenario_slowloris(args: argparse.Namespace, tmp: Path) -> dict:
    with NodeProcess() as node:
        space = start_space(node.url, "slowloris", join=False).id
        rate = max(500, args.slowloris // 8)
        proc = loadtest(node, space, tmp / "s.json", "--listeners", "200", "--profile", "ramp", "--ramp", "20",
                        "--duration", "30", "--attack", "slowloris", "--attack-rate", str(rate),
                        "--attack-connections", str(args.slowloris), "--attack-start", "0", "--attack-duration", "28",
                        "--attack-sources", "250")
        r = finish(proc, tmp / "s.json", 150)
    a = r["attack"]
    return {"sockets_max": a["open_max"], "opened": a["opened"], "cut_off": a["cut_off"], "held_p50_s": a["held_p50_s"],
            "join_p99_s": r["join_p99_s"], "admitted": r["admitted"], "stalled_listeners": r["stalled_listeners"],
            "server_cpu_pct": r["server_cpu_pct"], "server_rss_mb_max": r["server_rss_mb_max"],
            "ok": {f"{args.slowloris} sockets held": a["open_max"] >= args.slowloris * 0.95,
                   "joins p99 <= 1 s": r["never_answered"] == 0 and (r["join_p99_s"] or 9) <= 1.0}}


def scenario_cost(args: argparse.Namespace, tmp: Path) -> dict:
    """What a refusal costs next to what an admission costs, over real HTTP: wrk POSTs joins
    for ``--cost-seconds`` each way, and the CPU seconds of the node and of the edge (Varnish
    and its connection cap) are divided by the answers. Admission decisions: each join from a
    new address (an X-Forwarded-For the node trusts, as from an edge), seated or queued.
    Refusals: every join from one address past its rate. Both as deployed, through a Varnish
    edge (refused there by its per-address join rate, without a byte reaching the node; the
    admissions' edge has no join rate, wrk being one address), and at the node alone (refused
    by the address GCRA before the body is read, 429 address_rate_limited)."""
    from join_rate import SERVE_ARGS, HttpRun, measure_http

    wrk = argparse.Namespace(threads=1, connections=64, seconds=args.cost_seconds)
    seats = ("--max-listeners", "10000000", "--admit-rate", "1000000", "--admit-burst", "1000000")
    with NodeProcess(args=(*seats, *SERVE_ARGS)) as node:
        space = start_space(node.url, "cost", join=False).id

        def via_edge(name: str, client: str, **options: int) -> tuple[float, float, HttpRun]:
            """(edge us, node us) per answer, and the run."""
            spec = EdgeSpec.signed(name, SECRET, (Backend.parse("origin", node.url),), **options)  # type: ignore[arg-type]
            edge = Edge(spec, tmp / name, HOST, free_port()).start()
            try:
                assert edge.proc is not None
                cpu = ProcessCpu(edge.proc.pid)  # varnishd and its connection cap (nginx)
                e0 = cpu.cpu_s()
                r = measure_http(node, space, wrk, client=client, url=edge.url)
                return 1e6 * (cpu.cpu_s() - e0) / max(1, r.requests), 1e6 * r.node_cpu_s / max(1, r.requests), r
            finally:
                edge.stop()

        admitted = measure_http(node, space, wrk)
        refused = measure_http(node, space, wrk, client="192.0.2.1")
        adm_edge_us, adm_node_us, adm_run = via_edge("admit", "spread", join_rate=0)
        ref_edge_us, ref_node_us, ref_run = via_edge("refuse", "192.0.2.2")
    admission_us, refusal_us = 1e6 / admitted.per_cpu_s, 1e6 / refused.per_cpu_s
    admission_edge_total, refusal_edge_total = adm_edge_us + adm_node_us, ref_edge_us + ref_node_us
    return {"admission_us": round(admission_us, 1), "refusal_us": round(refusal_us, 1),
            "ratio": round(admission_us / refusal_us, 1),
            "edge": {"admission_us": [round(adm_edge_us, 1), round(adm_node_us, 1)],
                     "refusal_us": [round(ref_edge_us, 1), round(ref_node_us, 2)],
                     "ratio": round(admission_edge_total / refusal_edge_total, 1),
                     "admission_statuses": adm_run.statuses, "refusal_statuses": ref_run.statuses},
            "admitted": {"requests": admitted.requests, "statuses": admitted.statuses, "node_pct": admitted.node_percent},
            "refused": {"requests": refused.requests, "statuses": refused.statuses, "node_pct": refused.node_percent},
            "ok": {"every admission decided (2xx)": admitted.non_2xx == 0 and adm_run.non_2xx == 0,
                   "refusals refused (429)": refused.statuses.get("429", 0) >= 0.95 * refused.requests
                   and ref_run.statuses.get("429", 0) >= 0.95 * ref_run.requests,
                   "as deployed, a refusal costs far less than an admission (< 1/3, edge and node together)":
                       refusal_edge_total < admission_edge_total / 3}}


DETECTOR_SCENARIOS = {  # name: (expected label, loadtest args)
    "normal": ("normal", ["--listeners", "40", "--profile", "ramp", "--ramp", "15"]),
    "surge": ("surge", ["--listeners", "1500", "--profile", "surge", "--ramp", "5", "--procs", "2"]),
    "attack": ("attack", ["--listeners", "0", "--ramp", "1", "--attack", "join-flood", "--attack-rate", "400",
                          "--attack-duration", "15"]),
    "both": ("surge+attack", ["--listeners", "1500", "--profile", "surge", "--ramp", "5", "--procs", "2",
                              "--attack", "join-flood", "--attack-rate", "400", "--attack-duration", "15"]),
}


def scenario_detector(args: argparse.Namespace, tmp: Path) -> dict:
    out = {}
    for name, (expected, extra) in DETECTOR_SCENARIOS.items():
        with NodeProcess(args=("--pow-bits", str(args.pow_bits))) as node:
            space = start_space(node.url, name, join=False).id
            with Watcher(node, space) as w:
                r = finish(loadtest(node, space, tmp / f"d-{name}.json", "--duration", "20", *extra), tmp / f"d-{name}.json",
                           150)
        t0 = t0_of(r)
        seen = [lab for t, lab, _ in w.samples if t >= t0]
        after = w.first(expected, t0)
        ok = (set(seen) == {"normal"}) if expected == "normal" else (after is not None and after <= ONSET_LIMIT_S)
        evidence = next((d["evidence"] for _, lab, d in reversed(w.samples) if lab == expected), {})
        out[name] = {"expected": expected, "first_seen_s": after, "labels_seen": sorted(set(seen)), "ok": ok,
                     "evidence": evidence, "labels": [(round(t - t0, 1), lab) for t, lab, _ in w.samples]}
    return out


def table(results: dict) -> str:
    lines = []
    if "flood" in results:
        f = results["flood"]
        lines += [
            f"(a) via the {f['via']}: {f['listeners']} listeners ({f['player']} player) at {f['legit_join_rate']}/s + join flood {f['flood_rate']:g}/s + bad tokens "
            f"{f['flood_rate']:g}/s",
            f"    admitted {f['admitted']}, failed {f['failed']}, stalled {f['stalled_listeners']}, join p99 "
            f"{f['join_p99_s']} s, first audio p99 {f['first_audio_p99_s']} s, PoW solved by listeners {f['pow_solved']}",
            f"    join flood: sent {f['flood']['sent']}, refused {f['flood']['refused']} {f['flood']['by_error']}, "
            f"let through (seated or queued) {f['flood']['accepted']}; labelled attack {f['attack_label_after_s']} s after onset",
            f"    bad tokens: sent {f['bad_token']['sent']}, refused {f['bad_token']['refused']}, accepted "
            f"{f['bad_token']['accepted']}",
            f"    flood joins challenged as suspects before any verdict: {f['challenges_to_suspects']}",
            f"    CPU: node {f['server_cpu_pct']} %, edge {f['edge_cpu_pct']} %, generator {f['generator_cpu_pct']} %, "
            f"other processes {f['other_cpu_pct']} %",
        ] + [f"    [{'ok' if v else 'MISSED'}] {k}" for k, v in f["ok"].items()]
    if "slowloris" in results:
        s = results["slowloris"]
        lines += [f"(b) slowloris: {s['sockets_max']} sockets open at most ({s['opened']} opened, {s['cut_off']} cut off by "
                  f"the node, held p50 {s['held_p50_s']} s); joins p99 {s['join_p99_s']} s; server CPU "
                  f"{s['server_cpu_pct']} %, RSS {s['server_rss_mb_max']} MB"]
        lines += [f"    [{'ok' if v else 'MISSED'}] {k}" for k, v in s["ok"].items()]
    if "cost" in results:
        c = results["cost"]
        e = c["edge"]
        lines += ["(cost) CPU per join over HTTP, as deployed (through an edge; us of the edge + us of the node):",
                  f"    an admission decision {e['admission_us'][0]} + {e['admission_us'][1]} us "
                  f"({e['admission_statuses']}), a refusal {e['refusal_us'][0]} + {e['refusal_us'][1]} us "
                  f"({e['refusal_statuses']}): {e['ratio']}x less",
                  f"    at the node alone: an admission decision {c['admission_us']} us ({c['admitted']['statuses']}), "
                  f"a refusal {c['refusal_us']} us ({c['refused']['statuses']}): {c['ratio']}x less"]
        lines += [f"    [{'ok' if v else 'MISSED'}] {k}" for k, v in c["ok"].items()]
    if "detector" in results:
        lines.append("(c) detector        expected        first seen after onset   labels seen")
        for name, d in results["detector"].items():
            seen = "-" if d["first_seen_s"] is None else f"{d['first_seen_s']:.1f} s"
            lines.append(f"    [{'ok' if d['ok'] else 'MISSED'}] {name:<10} {d['expected']:<15} {seen:<24} "
                         f"{', '.join(d['labels_seen'])}")
    return "\n".join(lines)


def plot(results: dict, path: str) -> None:
    from amphi.core.extras import pyplot

    plt = pyplot("bench/defense.py's figure")

    fig, axes = plt.subplots(2, 1, figsize=(10, 7))
    if "flood" in results:
        f = results["flood"]
        t, p99, stalled = zip(*[(a, b if b is not None else float("nan"), c) for a, b, c in f["timeline"]])
        axes[0].plot(t, p99, label="legit join answer p99 (s)")
        axes[0].plot(t, stalled, label="listeners stalled now")
        axes[0].axhline(1.0, ls=":", c="gray")
        xs = [x for x, lab in f["labels"] if "attack" in lab]
        if xs:
            axes[0].axvspan(min(xs), max(xs), color="red", alpha=0.1, label="detector says attack")
        axes[0].set_title(f"(a) via the {f['via']}: {f['listeners']} listeners ({f['player']} player) + join flood "
                          f"{f['flood_rate']:g}/s + bad tokens {f['flood_rate']:g}/s")
        axes[0].set_xlabel("s from T0")
        axes[0].legend()
    if "detector" in results:
        for i, (name, d) in enumerate(results["detector"].items()):
            xs = [x for x, _ in d["labels"]]
            ys = [LABELS.index(lab) + i * 0.05 for _, lab in d["labels"]]
            axes[1].step(xs, ys, where="post", label=f"{name} (expected {d['expected']})")
        axes[1].set_yticks(range(len(LABELS)), LABELS)
        axes[1].axvline(0, c="gray", ls=":")
        axes[1].axvline(ONSET_LIMIT_S, c="gray", ls="--")
        axes[1].set_title("(c) detector label per scenario (onset at 0; bar: right label by 10 s)")
        axes[1].set_xlabel("s from onset")
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="cost,flood,slowloris,detector")
    ap.add_argument("--listeners", type=int, default=2000)
    ap.add_argument("--legit-ramp", type=float, default=40.0, help="seconds over which the listeners of (a) join")
    ap.add_argument("--slowloris", type=int, default=5000)
    ap.add_argument("--pow-bits", type=int, default=8)
    ap.add_argument("--cost-seconds", type=float, default=8.0, help="(cost): wrk's run each way")
    ap.add_argument("--flood-via", choices=("edge", "node"), default="edge",
                    help="(a): everyone meets a Varnish edge in front of the node (default), or the node itself")
    ap.add_argument("--player", choices=("ll", "segments"), default="segments",
                    help="(a): the listeners' player. Segments by default: 2,000 LL-HLS players (7,200 requests/s) "
                         "through an edge stall on this 2-core machine with no attack at all")
    ap.add_argument("--warm", type=float, default=WARM_S, help="(a): the Space's age when the listeners start arriving")
    ap.add_argument("--tail", type=float, default=15.0, help="(a): seconds of listening after the ramp")
    ap.add_argument("--flood-share", type=float, default=0.01,
                    help="(a): the share of the flood's joins that may be let through (default 0.01)")
    ap.add_argument("--json")
    ap.add_argument("--plot")
    small_mode(ap, flood_share=0.5, only="flood", listeners=60, legit_ramp=6.0, player="ll", warm=5.0, tail=4.0)
    args = ap.parse_args()
    os.environ["AMPHI_SECRET"] = SECRET  # the nodes inherit it; the edge is given it
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="amphi-defense-") as d:
        tmp = Path(d)
        for name in args.only.split(","):
            print(f"running {name} ...", file=sys.stderr, flush=True)
            results[name] = {"cost": scenario_cost, "flood": scenario_flood, "slowloris": scenario_slowloris,
                             "detector": scenario_detector}[name](args, tmp)
    print(table(results))
    print("(a shared 2-core machine: figures are noisy; CPU shares are printed beside them)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    oks = []
    for name, r in results.items():
        if name == "detector":
            oks += [d["ok"] for d in r.values()]
        else:
            oks += list(r["ok"].values())
    return 0 if all(oks) else 1


if __name__ == "__main__":
    run(main)
