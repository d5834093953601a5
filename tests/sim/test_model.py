"""The simulator's model with small numbers: conservation, the seat cap, edge loss, scaling,
scenarios and bad input."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from amphi.cli import main
from amphi.core.clock import VirtualClock
from amphi.core.config import AdmissionConfig
from amphi.edge.joins import WINDOW_S, JoinBatcher
from amphi.edge.renewals import BATCH, REPORT_S
from amphi.edge.varnish import FANOUT_WORKERS
from amphi.sim.model import (FAILED, JOINING, LEFT, LINE_GRACE_S, LINE_TTL_S, NEW, PLAYING, WAITING, SimConfig, SimError,
                             Simulation)
from amphi.sim.scenario import build, load_scenario, scenario_names


def small(**kw) -> SimConfig:
    base = dict(listeners=2000, arrival="surge", arrival_s=20.0, listen_s=60.0, edges=2, edge_capacity=10_000,
                admission=AdmissionConfig(max_listeners=800, admit_rate_per_s=50, admit_burst=20))
    return SimConfig(**{**base, **kw})


def test_every_arrival_is_admitted_waiting_joining_failed_or_left() -> None:
    sim = Simulation(small(stay_s=30.0))
    r = sim.run()
    states = {s: sim.state.count(s) for s in (NEW, JOINING, WAITING, PLAYING, LEFT, FAILED)}
    assert sum(states.values()) == sim.n == 2000 and states[NEW] == 0
    assert r["admitted"] == states[PLAYING] + states[LEFT] > 0
    assert r["playing_end"] + r["waiting_end"] + r["joining_end"] + r["failed"] + r["left"] == 2000
    for row in r["timeline"]:
        assert row["playing"] + row["waiting"] + row["joining"] + row["failed"] + row["left"] == row["arrived"]
    assert r["left"] > 0 and r["admitted"] > 800  # seats freed by leavers went to the line


def test_the_seat_cap_is_never_exceeded_and_the_rate_holds() -> None:
    sim = Simulation(small())
    r = sim.run()
    assert max(row["playing"] for row in r["timeline"]) == r["admitted"] == 800
    assert r["waiting_end"] + r["failed"] + r["joining_end"] == 1200
    # after the burst (20), the line moves at the admission rate (50/s): 780 seats take 15.6 s
    last_seat = max(a for a in sim.admitted_at if a == a)
    assert (800 - 20) / 50 <= last_seat <= (800 - 20) / 50 + 12  # + the last one's poll interval


def test_scaled_run_agrees_with_the_exact_one() -> None:
    exact = Simulation(small(listeners=4000, admission=AdmissionConfig(max_listeners=3000, admit_rate_per_s=100))).run()
    scaled = Simulation(small(listeners=4000, admission=AdmissionConfig(max_listeners=3000, admit_rate_per_s=100),
                              max_clients=400)).run()
    assert exact["scale"] == 1 and scaled["scale"] == 10 and scaled["simulated_clients"] == 400
    assert scaled["admitted"] == exact["admitted"] == 3000
    assert abs(scaled["waiting_max"] - exact["waiting_max"]) <= 0.1 * exact["waiting_max"]
    assert abs(scaled["wait_p50_s"] - exact["wait_p50_s"]) <= 0.1 * exact["wait_p50_s"]


def test_api_nodes_share_the_load_and_the_counts_multiply() -> None:
    one = Simulation(small(listeners=1000, max_listeners=400)).run()
    four = Simulation(small(listeners=4000, api_nodes=4, max_listeners=1600)).run()
    assert four["real_per_simulated"] == 4 and four["admitted"] == 4 * one["admitted"] == 1600


def test_losing_an_edge_moves_its_listeners_with_backoff() -> None:
    cfg = small(listeners=600, edges=3, edge_capacity=250, fail_edge_at_s=40.0,
                admission=AdmissionConfig(max_listeners=600, admit_rate_per_s=200))
    sim = Simulation(cfg)
    r = sim.run()
    loss = r["edge_loss"]
    assert loss["listeners_moved"] == 200 and loss["edges_left"] == 2
    assert 0 < loss["back_by_s"] <= 1.0  # the client's first backoff: uniform in [0, 1] s
    assert sum(sim.edge_load) == r["playing_end"] == 600 and sim.disconnected == 0
    assert loss["gap_stall_listener_s"] == 0  # a 1.5 s buffer covers a backoff of 1 s at most
    after = [row for row in r["timeline"] if row["t"] > 42]
    assert after and all(row["edges_alive"] == 2 and row["stalled_now"] == 100 for row in after)  # 600 on 2 x 250
    assert r["plan"]["edges_for_zero_stalls"] == 3 and r["plan"]["edges_to_survive_one_loss"] == 4


def test_an_overloaded_node_times_out_and_clients_give_up() -> None:
    cfg = small(request_cost_s=0.05, request_timeout_s=2.0, listen_s=120.0)  # 20 requests/s at most
    r = Simulation(cfg).run()
    assert r["failed"] > 0 and r["degradation_level_max"] >= 1
    assert r["join_p99_s"] > 2.0


def test_waiting_clients_read_the_line_and_reach_the_node_only_to_take_their_seat() -> None:
    r = Simulation(small()).run()  # 800 seats, 2000 arrive: 1200 wait to the end, by the line document
    assert r["waiting_end"] == 1200 and r["line_reads"] > 2000
    # a join each, a ticket for each of the ~780 seated from the line, and nothing for those still waiting
    assert r["api_requests"] <= 2000 + 800 + 50, r["api_requests"]


@pytest.mark.parametrize("edges", [2, 0])
def test_a_ticket_goes_the_moment_the_line_document_shows_the_turn(edges: int) -> None:
    """As the loadtest's listener (``_watch_line``): the read that shows the place called is
    followed by the ticket at once, so a seat from the line comes a request's answer after a
    read (behind edges, plus the ticket's wait for its batch, a window at most), never later
    (the document's age is the edge's copy's, ``edge_line``)."""
    sim = Simulation(small(edges=edges))
    reads: dict[int, float] = {}
    on_line = sim.on_line

    def spy(t: float, cid: int) -> None:
        if sim.state[cid] == WAITING:
            reads[cid] = t
        on_line(t, cid)

    sim.on_line = spy  # type: ignore[method-assign]
    r = sim.run()
    from_line = [c for c in reads if not math.isnan(sim.admitted_at[c])]
    assert len(from_line) > 700 and r["admitted"] == 800
    bound = (WINDOW_S if edges else 0.0) + 0.01
    for c in from_line:
        assert 0 < sim.admitted_at[c] - reads[c] < bound, (c, sim.admitted_at[c], reads[c])


def test_an_edge_serves_its_copy_of_the_line_a_second_then_stale_while_it_fetches() -> None:
    """Varnish with the node's ``max-age=1`` and the default grace: fresh for ``LINE_TTL_S``;
    the first read after that gets the old copy and the next ones the copy it fetched; past
    the grace a read waits for the fetch."""
    sim = Simulation(small())
    taken: list[float] = []
    fetch_line = sim.fetch_line

    def fetch_spy(t: float):  # type: ignore[no-untyped-def]
        taken.append(t)
        return fetch_line(t)

    sim.fetch_line = fetch_spy  # type: ignore[method-assign]
    first = sim.edge_line(0.0, 0)
    assert first is not None and taken == [0.0]
    assert sim.edge_line(0.99 * LINE_TTL_S, 0) == first
    assert taken == [0.0]
    stale = sim.edge_line(1.2 * LINE_TTL_S, 0)
    assert stale == first and taken == [0.0, 1.2 * LINE_TTL_S]
    assert sim.line_copies[0] is not None and sim.line_copies[0][0] == 1.2 * LINE_TTL_S
    sim.edge_line(1.3 * LINE_TTL_S, 0)
    assert len(taken) == 2  # the copy fetched at 1.2
    late = 1.2 * LINE_TTL_S + LINE_TTL_S + LINE_GRACE_S + 1.0
    sim.edge_line(late, 0)
    assert taken[-1] == late and sim.line_copies[0][0] == late  # type: ignore[index]
    assert sim.line_copies[1] is None  # each edge its own copy


@pytest.mark.parametrize("refresh", [True, False])
def test_a_scaled_run_keeps_the_edges_copies_as_fresh_as_its_real_readers_would(refresh: bool) -> None:
    """Each simulated client stands for ten real ones: their reads (not simulated) refresh an
    edge's copy as soon as it expires, so a simulated read finds it little more than
    ``LINE_TTL_S`` old (as real readers, some tens an edge, would); without them (``on_line_fetch``
    off) a simulated read on an expired copy would often be served one much older."""
    cfg = small(listeners=20_000, max_clients=2000, edges=200,
                admission=AdmissionConfig(max_listeners=8000, admit_rate_per_s=200, admit_burst=20))
    sim = Simulation(cfg)
    ages: list[float] = []
    edge_line = sim.edge_line

    def spy(t: float, e: int):  # type: ignore[no-untyped-def]
        copy = sim.line_copies[e]
        if copy is not None:
            ages.append(t - copy[0])
        return edge_line(t, e)

    sim.edge_line = spy  # type: ignore[method-assign]
    if not refresh:
        sim.on_line_fetch = lambda t, e: None  # type: ignore[method-assign]
    sim.run()
    assert sim.scale == 10 and len(ages) > 10_000
    p99 = sorted(ages)[int(0.99 * len(ages))]
    assert (p99 < 1.5 * LINE_TTL_S) == refresh, p99


@pytest.mark.parametrize("edges", [2, 0])
def test_an_undersized_control_plane_sheds_and_seats_slower_never_stops(edges: int) -> None:
    """A node with a fifth of the CPU the surge wants: behind edges it sheds (the ladder's
    rungs) and keeps seating at the rate; serving the media itself it also cuts the limit.
    (Behind edges the joins come in batches of about six: a decision is made to cost 16 ms,
    20 ms with its share of the batch, as a join on its own does with no edges.)"""
    r = Simulation(small(request_cost_s=0.02, join_cost_s=0.016, listen_s=120.0, edges=edges)).run()
    limits = [row["limit"] for row in r["timeline"]]
    assert r["degradation_level_max"] == 2
    if edges:
        assert r["admitted"] == 800 and r["failed"] == 0 and min(limits) == 800
    else:
        assert min(limits) < 800


@pytest.mark.parametrize("api_nodes", [1, 2])
def test_behind_edges_joins_reach_the_nodes_a_batch_per_worker_per_window(api_nodes: int) -> None:
    """2 edges: 4 fan-out workers, 40 batches a second at most, however many join (the
    surge: ~240 joins/s a node at first); each join waits its window. The line's tickets are
    requests of their own (sent on the connection that read the line document, which the
    fan-out handed to nginx), at the admission rate at most, and each edge fetches the line
    document once a second."""
    cfg = small(listeners=2000 * api_nodes, api_nodes=api_nodes, max_listeners=800 * api_nodes)
    r = Simulation(cfg).run()
    bound = cfg.edges * FANOUT_WORKERS / WINDOW_S
    surge = [row for row in r["timeline"] if row["t"] <= cfg.arrival_s]
    # nobody leaves: besides the batches, tickets (one for each seated, at most), line fetches and renewal reports
    reports = sum(cfg.edges * FANOUT_WORKERS / REPORT_S + row["playing"] / (cfg.admission.token_ttl_s / 2) / BATCH
                  for row in surge)
    others = surge[-1]["admitted"] + len(surge) * cfg.edges / LINE_TTL_S + reports
    assert sum(row["api_rps"] for row in surge) <= len(surge) * bound + others + 1
    peak = max(surge, key=lambda row: row["joins_per_s"])
    fetches = cfg.edges * cfg.horizon_s / LINE_TTL_S
    assert peak["joins_per_s"] > 4 * bound and peak["api_rps"] > 0.9 * bound
    assert r["joins"] - r["admitted"] > 2 * (r["api_requests"] - r["admitted"] - fetches)  # the rest came in batches
    assert r["plan"]["joins_per_s_peak"] == peak["joins_per_s"]
    assert r["failed"] == 0 and r["admitted"] == 800 * api_nodes
    assert 0.8 * WINDOW_S < r["join_p99_s"] <= WINDOW_S + 0.01  # a window's wait, the node's answer, nothing more
    assert r["join_p50_s"] < 0.7 * WINDOW_S


@pytest.mark.parametrize("max_clients", [20_000, 400])
def test_the_batches_counted_are_those_the_edges_join_batcher_sends(max_clients: int) -> None:
    """The same joins (when each reached an edge) through edge/joins.py's JoinBatcher, each to
    one of the workers at random: as many batches as the model counted, within 5 % (the model
    estimates each worker's rate from the last joins), exact or scaled (then each simulated
    join is ``scale`` joins, to as many workers)."""
    cfg = small(listeners=4000, edges=5, admission=AdmissionConfig(max_listeners=3000, admit_rate_per_s=100),
                max_clients=max_clients)
    sim = Simulation(cfg)
    sent: list[float] = []
    fetches = 0
    on_send, fetch_line = sim.on_send, sim.fetch_line

    def spy(t: float, cid: int) -> None:
        if sim.state[cid] in (JOINING, WAITING):
            sent.append(t)  # a fresh join, a retry, a ticket after a line read: all in the edges' batches
        on_send(t, cid)

    def fetch_spy(t: float):  # type: ignore[no-untyped-def]
        nonlocal fetches
        fetches += 1
        return fetch_line(t)

    sim.on_send = spy  # type: ignore[method-assign, assignment]
    sim.fetch_line = fetch_spy  # type: ignore[method-assign]
    r = sim.run()
    rng = random.Random(1)
    workers = cfg.edges * FANOUT_WORKERS
    arrivals: list[list[float]] = [[] for _ in range(workers)]
    for t in sent:
        for w in rng.sample(range(workers), sim.scale):
            arrivals[w].append(t)
    batches = 0
    for times in arrivals:
        edge, due = JoinBatcher(), math.inf
        for t in [*times, math.inf]:
            while due <= t and due < math.inf:  # the window's end comes first: the batch goes
                edge.take(due)
                wait = edge.wait_s(due)
                due = math.inf if wait is None else due + wait
            if t < math.inf:
                edge.add(t)  # type: ignore[arg-type]  # what a join carries does not matter here
                wait = edge.wait_s(t)
                if wait == 0:
                    edge.take(t)
                    wait = edge.wait_s(t)
                due = math.inf if wait is None else t + wait
        batches += edge.batches
    assert r["scale"] == (1 if max_clients > 4000 else 10) and r["joins"] == len(sent) * sim.scale
    assert fetches > 0
    batched = r["api_requests"] - fetches
    assert abs(batched - batches) <= 0.05 * batches, (batched, batches)
    assert batches < 0.6 * r["joins"]


def test_without_edges_every_join_is_a_request_as_before() -> None:
    """No edges: a join, a line read, a leave, a request each; the batch's cost does not enter."""
    cfg = small(edges=0, stay_s=30.0)
    r = Simulation(cfg).run()
    assert r["joins"] > 2000 and r["api_requests"] == r["joins"] + r["line_reads"] + r["left"]
    assert r["join_p99_s"] < WINDOW_S / 10  # no window to wait for
    for row in r["timeline"]:  # every request, renewals included, costs request_cost_s
        assert row["api_cpu"] == pytest.approx(row["api_rps"] * cfg.request_cost_s, abs=0.002)
    dear = Simulation(small(edges=0, stay_s=30.0, join_cost_s=1.0)).run()
    assert dear["timeline"] == r["timeline"] and dear["join_p99_s"] == r["join_p99_s"]


def test_same_seed_same_run() -> None:
    a, b = Simulation(small()).run(), Simulation(small()).run()
    assert a["timeline"] == b["timeline"] and a["wait_p99_s"] == b["wait_p99_s"]


def test_virtual_clock_moves_forward_only() -> None:
    c = VirtualClock(10.0)
    c.advance(2.5)
    assert c.now() == 12.5
    with pytest.raises(ValueError, match="cannot go back"):
        c.advance_to(12.0)


@pytest.mark.parametrize("name", scenario_names())
def test_shipped_scenarios_load(name: str) -> None:
    cfg = build(load_scenario(name))
    assert cfg.listeners >= 600_000 and load_scenario(name)["about"]["title"]


@pytest.mark.parametrize("args, message", [
    (["--listeners", "10", "--arrival", "wave:10s"], "KIND:WINDOW"),
    (["--listeners", "10", "--arrival", "surge:soon"], "not a duration"),
    (["--listeners", "10", "--fail-edge-at", "1"], "--fail-edge-at needs --edges"),
    (["--listeners", "10", "--edges", "2", "--fail-edge-at", "500"], "within the run"),
    (["--scenario", "no-such-night"], "no scenario"),
    (["--arrival", "surge:10s"], "how many listeners"),
])
def test_bad_input_is_a_usage_error(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["simulate", "--quiet", *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_calibrate_refuses_a_file_that_is_not_a_loadtest(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"hello": 1}))
    result = CliRunner().invoke(main, ["simulate", "--calibrate", str(bad)])
    assert result.exit_code == 2 and "not an amphi loadtest" in result.output
    with pytest.raises(SimError, match="unknown setting"):
        build({"listeners": 5, "colour": "red"})


def test_cli_writes_summary_json_and_plot(tmp_path: Path) -> None:
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    result = CliRunner().invoke(main, ["simulate", "--listeners", "3000", "--arrival", "ramp:30s", "--listen", "1m",
                                       "--edges", "2", "--edge-capacity", "2000", "--max-listeners", "3000",
                                       "--fail-edge-at", "1", "--json", str(out), "--plot", str(png), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "edges for zero stalls" in result.output and "edge lost" in result.output
    r = json.loads(out.read_text())
    assert r["admitted"] == 3000 and r["plan"]["edges_for_zero_stalls"] == 2 and len(r["timeline"]) == 90
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[1] > 600
