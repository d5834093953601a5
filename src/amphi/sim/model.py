"""The simulator's model: a whole night on a virtual clock, with the production admission
code making every admission decision (docs/simulate.md).

    arrivals ─▶ clients ─▶ API node (a FIFO of requests: work in seconds)
                  ▲          └─▶ Listeners (production: the node's join decision, Admission, Governor)
                  │                    │ admitted
                  └── retry / backoff  ▼
                                edges (listeners, requests/s) ─▶ origin (requests per edge)

What is exact and what is aggregated:

* **API nodes**: one node is simulated; the others see the same load (the balancer spreads
  joins evenly and a ticket is only good at the node that issued it), so every count is
  that node's times ``api_nodes``.
* **Clients**: each simulated client stands for ``scale`` real ones (``scale`` = 1 when the
  node's share fits in ``max_clients``). The production ``Admission`` then runs on a config
  divided by ``scale`` (seats, rate, burst, line size): the same fluid, in bigger drops.
  ``scale`` is capped so that the scaled admission rate stays >= ``MIN_SCALED_RATE`` seats
  per second, where the server's retry advice is the same number in both units.
* **Renewals** are counted, not issued one by one: a renewal never changes a decision, so the
  production ``Admission`` is given seats that last the whole run and a listener who leaves
  frees its seat with ``Listeners.leave`` at the moment it leaves. Behind edges the edges renew
  tokens and report the seats (a request per fan-out worker per ``REPORT_S``, a thousand seats
  each: edge/renewals.py), which costs a node a request per report and ``extend_cost_s`` a
  seat; without edges the node renews each token (a request each).
* **Joins behind edges** reach the node a batch at a time (edge/joins.py: a fan-out worker
  sends what it gathered at once if its last batch left ``WINDOW_S`` ago, else when the
  window has passed; ``MAX_BATCH`` at most). The workers are aggregated (``batching``: a
  worker receiving Poisson joins at a rate, its batches per join and the share it sends at
  once): a second's requests are the batches that second's joins make at this node's share
  of the workers (``join_batches``: at most ``1 / WINDOW_S`` a worker); each join waits for
  its window (uniform in [0, ``WINDOW_S``] under load, 0 if its worker was idle: the rate of
  the last ``JOIN_RATE_OVER`` joins decides) before it reaches the node's queue, where it costs
  ``join_cost_s`` and its share of the batch's ``request_cost_s``. tests/sim checks the count
  against ``JoinBatcher`` run on the same joins. Without edges a join is a request of its own.
  A ticket sent after a read of the line document is batched too: the read hands the
  client's connection to nginx (the fan-out answers media and joins itself, nothing else),
  and nginx sends the join that follows back to the fan-out (docs/edge.md, "The front").
* **The line document** behind edges is each edge's copy (``edge_line``: Varnish keeps it
  ``LINE_TTL_S``, then serves it stale while it fetches the next, a request to a node); a
  client that sees its turn in it sends its ticket at once, one that does not reads again
  when the document advises.

The node's own ``amphi.control.listeners.Listeners`` answers every join and poll, runs every
admitter pass and applies every health verdict, over a ``MemoryStore`` (whose coroutines
never suspend, so ``settle`` drives them on the virtual clock without an event loop).
* **Listening** is counts: listeners per edge, requests per second per listener.

Everything else (the line, positions, retry advice and its jitter, the rate limit, the
pause and the limit of the degradation ladder, 503 when the line is full) is the production
code's answer, given the virtual ``now``.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import re
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from amphi.control.admission import ADMITTER_PERIOD_S, Admission, Line
from amphi.control.health import Governor, HealthSample
from amphi.control.listeners import InLine, Listeners, Seated, settle
from amphi.control.spaces import Space, SpaceState
from amphi.control.store.memory import MemoryStore
from amphi.control.tokens import Signer
from amphi.core.clock import VirtualClock
from amphi.core.config import AdmissionConfig, MediaConfig
from amphi.core.errors import AmphiError, BadRequest, TooBusy, TooEarly
from amphi.edge.joins import MAX_BATCH, WINDOW_S
from amphi.edge.renewals import BATCH, REPORT_S
from amphi.edge.varnish import FANOUT_WORKERS
from amphi.loadtest.listener import MAX_ATTEMPTS
from amphi.loadtest.profiles import backoff_s, header_retry_s, line_retry_s, retry_delay_s, schedule
from amphi.web.answers import poll_advice
from amphi.web.asgi import retry_after_value
from amphi.web.join import LINE_CACHE

ARRIVALS = ("surge", "ramp", "poisson")
PLAYERS = ("ll", "segments")
MIN_SCALED_RATE = 2.0  # seats/s in the scaled config: above 1/(3 * 0.2 s), position never sets the retry advice
T0 = 1_700_000_000.0  # the virtual clock starts at a Unix time, as the production code expects
SPACE = "sim"
SECRET = b"amphi-simulator-secret"  # signs the simulated tokens and tickets: nothing leaves the process

# client states, as the loadtest names them
NEW, JOINING, WAITING, PLAYING, LEFT, FAILED = range(6)
# events
ARRIVE, SEND, ANSWER, TIMEOUT, LEAVE, ADMITTER, HEALTH, SAMPLE, FAIL_EDGE, REATTACH, LINE, BATCHED, LINE_FETCH = range(13)
JOIN_RATE_OVER = 32  # the joins/s reaching the edges' fan-out workers: measured over this many (simulated) joins
# An edge keeps the line document as long as the node's Cache-Control says (web/join.py: max-age=1), and past that
# serves its copy while it fetches a fresh one: the VCL gives the document no grace of its own, so Varnish's
# default_grace (10 s) applies.
LINE_TTL_S = float(re.search(rb"max-age=(\d+)", LINE_CACHE).group(1))  # type: ignore[union-attr]
LINE_GRACE_S = 10.0
LINE_READS_OVER = 8  # the rate of an edge's line-document readers: measured over this many (simulated) reads


class _Nowhere:
    """The simulated Space's program and media URLs: none (listening is counts, see above)."""

    async def seated(self, space: Space) -> None:
        return None

    async def replay(self, space: Space) -> tuple[str | None, str | None]:
        return None, None

    def playlist(self, space_id: str, token: str) -> tuple[str, tuple[str, ...]]:
        return "", ()


_NOWHERE = _Nowhere()


class SimError(BadRequest):
    """A simulation that cannot be set up as asked (the CLI shows the message)."""

    code = "bad_simulation"


@dataclass(frozen=True)
class SimConfig:
    listeners: int  # real listeners arriving, all nodes together
    arrival: str = "surge"  # surge | ramp | poisson (the loadtest's profiles)
    arrival_s: float = 600.0  # the arrival window (surge: half-normal, sigma arrival_s / 3)
    listen_s: float = 3600.0  # simulated time after the arrival window
    stay_s: float | None = None  # mean listening time (exponential); None: to the end
    api_nodes: int = 1
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)  # each API node's settings
    max_listeners: int | None = None  # seats in all, shared out among the API nodes; None: admission.max_listeners each
    edges: int = 0  # 0: the nodes serve the media themselves
    edge_capacity: int = 10_000  # listeners one edge serves without stalling
    edge_rps: float | None = None  # requests per second one edge serves; None: only edge_capacity counts
    player: str = "ll"  # ll: a part and a blocking reload per part; segments: the same per segment
    request_cost_s: float = 0.0002  # node time per API request (join, poll, renewal, leave, a batch of joins): ~ measured on loopback
    # node time per join decided in an edge's batch, on top of request_cost_s per batch: bench/join_rate.py
    # measured 19,843 decisions per core-second in batches of 250 (50 us each, the batch's request included)
    join_cost_s: float = 0.00005
    extend_cost_s: float = 0.000003  # node time per seat in an edge's renewal report (Admission.extend: 0.9 us, JSON)
    media_cost_s: float = 0.0002  # node time per media request when the node serves media (edges = 0)
    rtt_s: float = 0.002  # a request's answer time with nothing queued
    request_timeout_s: float = 10.0  # clients give up on a request after this (and back off)
    fail_edge_at_s: float | None = None  # one edge (the fullest) is lost at this time
    max_clients: int = 20_000  # resolution: simulated clients per node at most
    seed: int = 1

    @property
    def horizon_s(self) -> float:
        return self.arrival_s + self.listen_s

    def check(self) -> None:
        if self.listeners < 1:
            raise SimError("--listeners must be at least 1")
        if self.arrival not in ARRIVALS:
            raise SimError(f"unknown arrival {self.arrival!r}; one of {', '.join(ARRIVALS)}")
        if self.player not in PLAYERS:
            raise SimError(f"unknown player {self.player!r}; one of {', '.join(PLAYERS)}")
        if self.arrival_s <= 0 or self.listen_s < 0:
            raise SimError("the arrival window must be positive and the listening time not negative")
        if self.max_listeners is not None and self.max_listeners < self.api_nodes:
            raise SimError("--max-listeners must give every API node a seat at least")
        if self.api_nodes < 1 or self.edges < 0 or self.edge_capacity < 1 or self.max_clients < 1:
            raise SimError("--api-nodes, --edge-capacity and --max-clients must be >= 1, --edges >= 0")
        if self.fail_edge_at_s is not None:
            if self.edges < 1:
                raise SimError("--fail-edge-at needs --edges >= 1 (with 0 edges the nodes serve the media)")
            if not 0 <= self.fail_edge_at_s < self.horizon_s:
                raise SimError(f"--fail-edge-at must fall within the run (0 .. {self.horizon_s / 60:g} min)")


def media_rps_per_listener(player: str, media: MediaConfig = MediaConfig()) -> float:
    """Requests a playing listener makes per second: a blocking playlist reload and a part
    per part (ll), or the same per segment (segments). The loadtest's listener does this."""
    per = media.part_s if player == "ll" else media.part_s * media.parts_per_segment
    return 2.0 / per


def scale_for(cfg: SimConfig) -> int:
    """Real clients per simulated client (see the module's docstring)."""
    per_node = cfg.listeners / cfg.api_nodes
    want = max(1, math.ceil(per_node / cfg.max_clients))
    cap = max(1, math.floor(cfg.admission.admit_rate_per_s / MIN_SCALED_RATE))
    return min(want, cap)


def scaled_admission(adm: AdmissionConfig, scale: int, horizon_s: float) -> AdmissionConfig:
    """The node's admission settings in simulated clients; seats last the whole run (renewals
    are counted, not issued: see the module's docstring)."""
    def div(n: int) -> int:
        return max(1, round(n / scale))

    return replace(adm, max_listeners=div(adm.max_listeners), min_listeners=min(div(adm.min_listeners), div(adm.max_listeners)),
                   admit_rate_per_s=adm.admit_rate_per_s / scale, admit_burst=div(adm.admit_burst),
                   max_waiting=div(adm.max_waiting), token_ttl_s=horizon_s + 2 * adm.token_ttl_s, secret=SECRET)


def node_admission(cfg: SimConfig) -> AdmissionConfig:
    """One API node's admission settings, its share of ``max_listeners`` included."""
    if cfg.max_listeners is None:
        return cfg.admission
    per_node = math.ceil(cfg.max_listeners / cfg.api_nodes)
    return replace(cfg.admission, max_listeners=per_node, min_listeners=min(cfg.admission.min_listeners, per_node))


def batching(per_worker: float, window_s: float = WINDOW_S, max_batch: int = MAX_BATCH) -> tuple[float, float, float]:
    """A fan-out worker receiving joins at ``per_worker`` a second (Poisson), batched as
    edge/joins.py's ``JoinBatcher`` does: (batches per join, the share of joins sent at once,
    the longest wait). After each batch a window: it ends with a batch if a join came in it,
    else the worker is idle until the next join, which goes at once and opens a window; so a
    batch every ``window_s + P(empty window) / rate`` on average (at most ``1 / window_s`` a
    second), and a join that found a window open waits for its end (uniform under load).
    Faster than ``max_batch`` a window, full batches go at once."""
    if per_worker <= 0:
        return 1.0, 1.0, 0.0
    if per_worker * window_s >= max_batch:
        return 1.0 / max_batch, 0.0, max_batch / per_worker
    idle = math.exp(-per_worker * window_s)
    batches_per_s = 1.0 / (window_s + idle / per_worker)
    return batches_per_s / per_worker, batches_per_s * idle / per_worker, window_s


def quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class Simulation:
    """One run. ``run()`` returns the result dict that ``amphi.sim.report`` prints and plots."""

    def __init__(self, cfg: SimConfig, progress: Callable[[str], None] | None = None) -> None:
        cfg.check()
        self.cfg = cfg
        self.progress = progress
        self.rng = random.Random(cfg.seed)
        self.clock = VirtualClock(T0)
        self.scale = scale_for(cfg)
        self.mult = self.scale * cfg.api_nodes  # real listeners per simulated client, all nodes
        per_node = cfg.listeners / cfg.api_nodes
        self.n = max(1, round(per_node / self.scale))
        self.adm_cfg = scaled_admission(node_admission(cfg), self.scale, cfg.horizon_s)
        signer = Signer(SECRET)
        self.admission = Admission(self.adm_cfg, signer, random.Random(cfg.seed + 1))
        self.governor = Governor(self.adm_cfg, seats_cost=not cfg.edges)
        self.t = 0.0  # the event being handled
        self.space = Space(SPACE, "simulated", SpaceState.LIVE, "", T0, started_at=T0)
        self.listeners = Listeners(self.adm_cfg, MemoryStore(self.admission), self.governor, signer, _NOWHERE,
                                   _NOWHERE, wake=lambda: self.wake_admitter(self.t), clock=self.now)
        self.media_rps = media_rps_per_listener(cfg.player)
        self.buffer_s = MediaConfig().part_s * 3 if cfg.player == "ll" else MediaConfig().part_s * MediaConfig().parts_per_segment * 3
        sessions = schedule(cfg.arrival, self.n, duration_s=cfg.horizon_s, ramp_s=cfg.arrival_s, seed=cfg.seed)
        self.arrive_s = [s.arrive_s for s in sessions]
        n = self.n
        self.state = bytearray(n)
        self.ticket: list[str | None] = [None] * n
        self.place: list[int | None] = [None] * n  # while waiting: the place's number in the line
        self.token: list[str | None] = [None] * n
        self.failures = bytearray(n)
        self.answered = [math.nan] * n
        self.admitted_at = [math.nan] * n
        self.edge = array("i", [-1]) * n
        self.counts = [0] * 6  # clients per state
        self.counts[NEW] = n
        # the API node: a FIFO of work, in seconds of the node's time
        self.backlog_s = 0.0
        self.backlog_at = 0.0
        self.background = 0.0  # share of the node taken by renewals (and media, with no edges)
        self.period_work = 0.0
        self.period_lag = 0.0
        self.period_joins: list[float] = []
        self.sample_requests = 0.0  # real API requests to this node since the last sample, joins in batches apart
        self.sample_work = 0.0  # node time they took
        self.sample_batched = 0  # real joins that came in edges' batches since the last sample
        self.sample_joins = 0  # real joins decided by this node since the last sample (batched or not)
        self.sampled_at = 0.0
        self.sample_line_reads = 0  # simulated line-document reads since the last sample (edges serve them)
        self.api_requests = 0.0  # real requests to this node (joins or their batches, redemptions, leaves), in all
        self.joins_decided = 0  # real joins (fresh, redemptions, retries) this node decided, in all
        # joins behind edges: the rate reaching this node's share of the fan-out workers, and each join's share of a batch
        self.recent_joins: deque[float] = deque(maxlen=JOIN_RATE_OVER)  # when the last joins came
        self.sent_at = array("d", [0.0]) * n
        self.batch_share = array("d", [1.0]) * n
        self.line_reads = 0  # simulated line-document reads, in all
        self.line_copies: list[tuple[float, Line, float] | None] = [None] * cfg.edges  # each edge's: (fetched at, line, stretch)
        # when each edge's copy was last read (simulated reads): how often its real readers come
        self.line_copy_reads = [deque(maxlen=LINE_READS_OVER) for _ in range(cfg.edges)]
        # edges
        self.edge_load = [0] * cfg.edges  # simulated clients per edge
        self.alive = list(range(cfg.edges))
        self.rr = 0
        self.disconnected = 0
        self.edge_attempts: dict[int, int] = {}
        self.edge_loss: dict[str, object] | None = None
        self.stall_listener_s = 0.0
        self.stalled_peak = 0.0
        self.warnings: list[str] = []
        self.timeline: list[dict[str, object]] = []
        self.events: list[tuple[float, int, int, int]] = []
        self.seq = itertools.count()
        self.admitter_due = math.inf
        self.admitted_total = 0
        self.seats_per_s: list[int] = []
        self.level_max = 0
        self.late_renewals = False
        self.warned_background = False

    # -- events -----------------------------------------------------------------------------

    def at(self, t: float, kind: int, cid: int = -1) -> None:
        heapq.heappush(self.events, (t, next(self.seq), kind, cid))

    def wake_admitter(self, t: float) -> None:
        """The node's admitter runs at once when something changed (``_admission_changed``)."""
        if t < self.admitter_due:
            self.admitter_due = t
            self.at(t, ADMITTER)

    def set_state(self, cid: int, state: int) -> None:
        self.counts[self.state[cid]] -= 1
        self.counts[state] += 1
        self.state[cid] = state

    # -- the node's queue -------------------------------------------------------------------

    def drain(self, t: float) -> None:
        dt = t - self.backlog_at
        if dt > 0:
            self.backlog_s = max(0.0, self.backlog_s + (self.background - 1.0) * dt)
            self.backlog_at = t

    def queue(self, t: float, join: bool = False, share: float | None = None, waited: float = 0.0) -> float | None:
        """A simulated client's request reaches the node at ``t``: its answer time (the
        ``scale`` real requests it stands for are spread over the queue), or None if it
        would come after the client's timeout (the node never sees it: refused at accept).
        A join in an edge's batch (``share``: its share of one, ``waited`` at the edge) costs
        ``join_cost_s`` and its share of the batch's request, and is answered with the rest
        of its batch; its request is counted with its second's batches (``on_sample``)."""
        cfg = self.cfg
        self.drain(t)
        if share is None:
            cost, rest = cfg.request_cost_s, 0.0
        else:
            cost, rest = cfg.join_cost_s + cfg.request_cost_s * share, (1.0 / share - 1.0) * cfg.join_cost_s
        delay = cfg.rtt_s + self.backlog_s + cost * (self.scale + 1) / 2 + rest
        if waited + delay > cfg.request_timeout_s:
            return None
        work = cost * self.scale
        self.backlog_s += work
        self.period_work += work
        self.period_lag = max(self.period_lag, self.backlog_s)
        if share is None:
            self.sample_requests += self.scale
            self.sample_work += work
        else:
            self.sample_batched += self.scale
        if join:
            self.sample_joins += self.scale
            self.joins_decided += self.scale
        return delay

    def join_batches(self, joins: int, dt: float) -> float:
        """The batches (requests) that ``joins`` real joins in ``dt`` seconds make at this
        node's share of the edges' fan-out workers (``batching``): at most ``1 / WINDOW_S`` a
        worker a second, unless batches fill."""
        workers = len(self.alive) * FANOUT_WORKERS / self.cfg.api_nodes
        if not joins or not workers or dt <= 0:
            return float(joins)
        return joins * batching(joins / workers / dt)[0]

    def count_requests(self, t: float) -> tuple[float, float]:
        """This node's requests and their node time since the last count, joins' batches
        included; counted into ``api_requests``."""
        batches = self.join_batches(self.sample_batched, t - self.sampled_at)
        requests = self.sample_requests + batches
        work = self.sample_work + batches * self.cfg.request_cost_s + self.sample_batched * self.cfg.join_cost_s
        self.api_requests += requests
        self.sample_requests, self.sample_batched = 0.0, 0
        self.sample_work = 0.0
        self.sampled_at = t
        return requests, work

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> dict[str, object]:
        cfg = self.cfg
        for cid, a in enumerate(self.arrive_s):
            self.at(a, ARRIVE, cid)
        self.at(0.0, ADMITTER)
        self.admitter_due = 0.0
        self.at(self.adm_cfg.health_period_s, HEALTH)
        self.sample_every = max(1, math.ceil(cfg.horizon_s / 7200))
        self.at(float(self.sample_every), SAMPLE)
        if cfg.fail_edge_at_s is not None:
            self.at(cfg.fail_edge_at_s, FAIL_EDGE)
        report_every = cfg.horizon_s / 20
        next_report = report_every
        horizon = cfg.horizon_s
        events = self.events
        handlers = (self.on_arrive, self.on_send, self.on_answer, self.on_timeout, self.on_leave,
                    self.on_admitter, self.on_health, self.on_sample, self.on_fail_edge, self.on_reattach,
                    self.on_line, self.on_batched, self.on_line_fetch)
        while events:
            t, _, kind, cid = heapq.heappop(events)
            if t > horizon:
                break
            self.clock.advance_to(T0 + t)
            self.t = t
            handlers[kind](t, cid)
            if self.progress and t >= next_report:
                next_report += report_every
                row = self.timeline[-1] if self.timeline else None
                if row:
                    self.progress(f"t={t / 60:6.1f} min  arrived {row['arrived']:>9}  playing {row['playing']:>9}  "
                                  f"waiting {row['waiting']:>9}  failed {row['failed']:>7}  "
                                  f"api {row['api_rps']:>9.0f} req/s")
        return self.result()

    def now(self) -> float:
        return self.clock.now()

    def on_arrive(self, t: float, cid: int) -> None:
        self.set_state(cid, JOINING)
        self.on_send(t, cid)

    def on_send(self, t: float, cid: int) -> None:
        """A join (fresh, a ticket, a retry): to the node, or behind edges to a fan-out
        worker, which sends it in its next batch (see ``batching``)."""
        if self.state[cid] not in (JOINING, WAITING):
            return
        cfg = self.cfg
        if not (cfg.edges and self.alive):
            delay = self.queue(t, join=True)
            if delay is None:
                self.at(t + cfg.request_timeout_s, TIMEOUT, cid)
                return
            self.period_joins.append(delay - cfg.rtt_s)
            self.at(t + delay, ANSWER, cid)  # decided and answered at once: the queue is ahead of it
            return
        workers = len(self.alive) * FANOUT_WORKERS / cfg.api_nodes  # this node's share of the edges' workers
        share, at_once, longest = batching(self.join_rate(t) / workers)
        self.sent_at[cid] = t
        self.batch_share[cid] = share
        if self.rng.random() < at_once:
            self.on_batched(t, cid)
        else:
            self.at(t + self.rng.uniform(0.0, longest), BATCHED, cid)

    def join_rate(self, t: float) -> float:
        """Real joins a second reaching this node's share of the fan-out workers before one
        at ``t``: measured over the last ``JOIN_RATE_OVER`` joins (a short span in a surge,
        longer when joins are few; the first finds the workers idle)."""
        recent = self.recent_joins
        rate = 0.0
        if len(recent) > 1 and t > recent[0]:
            rate = (len(recent) - 1) * self.scale / (t - recent[0])
        recent.append(t)
        return rate

    def on_batched(self, t: float, cid: int) -> None:
        """The batch holding this join reaches the node: its decision costs ``join_cost_s``
        and its share of the batch's request; all of the batch is answered together."""
        cfg = self.cfg
        share = self.batch_share[cid]
        waited = t - self.sent_at[cid]
        delay = self.queue(t, join=True, share=share, waited=waited)
        if delay is None:
            self.at(self.sent_at[cid] + cfg.request_timeout_s, TIMEOUT, cid)
            return
        self.period_joins.append(delay - cfg.rtt_s)  # the node's part: the window's wait is the edge's
        self.at(t + delay, ANSWER, cid)

    def on_answer(self, t: float, cid: int) -> None:
        """The production decision for this client's join or poll, at the virtual now."""
        self.failures[cid] = 0
        try:  # the node's own join decision (MemoryStore never suspends: no loop needed)
            answer = settle(self.listeners.join(self.space, ticket=self.ticket[cid]))
        except (TooBusy, TooEarly) as err:  # 503 / 429: the client waits for Retry-After
            retry = header_retry_s(retry_after_value(err.retry_after_s or 1.0))
            self.at(t + retry_delay_s(retry, self.rng), SEND, cid)
            return
        except AmphiError as err:  # a bad ticket would be a bug in the model
            raise RuntimeError(f"the simulated client got {err.code}: {err.message}") from err
        if math.isnan(self.answered[cid]):
            self.answered[cid] = t
        if isinstance(answer, Seated):
            self.token[cid] = answer.token
            self.ticket[cid] = None
            self.admitted_at[cid] = t
            self.set_state(cid, PLAYING)
            self.admitted_total += 1
            self.attach(cid)
            if self.cfg.stay_s is not None:
                self.at(t + self.rng.expovariate(1.0 / self.cfg.stay_s), LEAVE, cid)
            return
        assert isinstance(answer, InLine)
        self.ticket[cid] = answer.ticket
        self.place[cid] = answer.place
        if self.state[cid] != WAITING:
            self.set_state(cid, WAITING)
        retry = round(answer.retry_after_s, 2)
        self.at(t + retry_delay_s(retry, self.rng), LINE, cid)

    def on_line(self, t: float, cid: int) -> None:
        """A waiting client reads the line document (from its edge; from the node when there
        are none) and, once it says the place's turn has come, sends its ticket at once, as
        the loadtest's listener (``_watch_line``) and the page do.

        Behind edges the document is the edge's copy (``edge_line``): up to ``LINE_TTL_S`` old,
        so a place called since is still shown in line and its client reads again when the
        document advises. The ticket after it goes in the edge's batch (nginx sends a join on a
        connection the fan-out handed it back to the fan-out)."""
        if self.state[cid] != WAITING:
            return
        self.sample_line_reads += 1
        self.line_reads += 1
        edged = bool(self.cfg.edges and self.alive)
        if edged:
            read = self.edge_line(t, self.alive[cid % len(self.alive)])
        elif self.queue(t) is None:  # the node serves it: a request like any other
            self.at(t + self.cfg.request_timeout_s, LINE, cid)
            return
        else:
            _, line, stretch = settle(self.listeners.line(self.space))  # type: ignore[misc]
            read = line, stretch
        if read is None:  # no document (the edge could not fetch one): the ticket, to learn the place
            self.on_send(t, cid)
            return
        line, stretch = read
        place = self.place[cid]
        position = None if place is None else line.position(place)
        if position is None:  # called: the ticket
            self.on_send(t, cid)
            return
        self.at(t + line_retry_s(poll_advice(self.adm_cfg, stretch), position, line.eta(position), self.rng), LINE, cid)

    def edge_line(self, t: float, e: int) -> tuple[Line, float] | None:
        """Edge ``e``'s line document at ``t`` as Varnish serves it: its copy while younger
        than ``LINE_TTL_S``; then still that copy (grace, ``LINE_GRACE_S``) while a fresh one
        is fetched from the node, which the next reader gets; past the grace a reader waits
        for the fetch. A fetch is a request to a node (the node's ``Listeners.line``, itself
        looked up once a second); None if no node answers and there is no copy. A read here
        is one of the ``mult`` real reads its client stands for: the others come at other
        moments, and the first after the copy expires refreshes it (``on_line_fetch``)."""
        self.line_copy_reads[e].append(t)
        copy = self.line_copies[e]
        age = math.inf if copy is None else t - copy[0]
        if age < LINE_TTL_S:
            assert copy is not None
            return copy[1], copy[2]
        self.refresh_line(t, e)
        if age < LINE_TTL_S + LINE_GRACE_S:
            assert copy is not None
            return copy[1], copy[2]
        fresh = self.line_copies[e]
        return None if fresh is None or fresh is copy else (fresh[1], fresh[2])

    def refresh_line(self, t: float, e: int) -> None:
        """Edge ``e`` fetches the line document. The real reads its simulated ones stand for
        but does not simulate (``mult - 1`` for each, at the rate of its last
        ``LINE_READS_OVER``) bring the next fetch: the first of them after the copy expires."""
        fetched = self.fetch_line(t)
        if fetched is None:
            return
        self.line_copies[e] = (t, *fetched)
        reads = self.line_copy_reads[e]
        # a waiting client reads again within the longest interval the document advises: past it, nobody reads here
        longest = self.adm_cfg.poll_max_s * (1 + self.adm_cfg.poll_jitter) * 1.1 * self.governor.retry_factor
        if reads and self.mult > 1 and t - reads[-1] < longest:  # real reads a second, not simulated
            others = len(reads) * (self.mult - 1) / max(LINE_TTL_S, t - reads[0])
            self.at(t + LINE_TTL_S + self.rng.expovariate(others), LINE_FETCH, e)

    def on_line_fetch(self, t: float, e: int) -> None:
        """An unsimulated real read finds edge ``e``'s copy expired: it is fetched again (unless
        a simulated read already did)."""
        copy = self.line_copies[e]
        if copy is not None and t - copy[0] >= LINE_TTL_S:  # (a lost edge's copy is gone: on_fail_edge)
            self.refresh_line(t, e)

    def fetch_line(self, t: float) -> tuple[Line, float] | None:
        """An edge fetches the line document: one request to one of the nodes (this node's
        share: ``1 / api_nodes`` of it); None if it would come after the timeout."""
        cfg = self.cfg
        self.drain(t)
        if cfg.rtt_s + self.backlog_s > cfg.request_timeout_s:
            return None
        work = cfg.request_cost_s / cfg.api_nodes
        self.backlog_s += work
        self.period_work += work
        self.sample_requests += 1.0 / cfg.api_nodes
        self.sample_work += work
        _, line, stretch = settle(self.listeners.line(self.space))  # type: ignore[misc]
        return line, stretch

    def on_timeout(self, t: float, cid: int) -> None:
        """No answer within the client's timeout: full-jitter backoff, and after
        ``MAX_ATTEMPTS`` failures in a row the client gives up (the loadtest's listener)."""
        self.failures[cid] += 1
        if self.failures[cid] >= MAX_ATTEMPTS:
            self.set_state(cid, FAILED)
            return
        self.at(t + backoff_s(self.failures[cid], self.rng), SEND, cid)

    def on_leave(self, t: float, cid: int) -> None:
        if self.state[cid] != PLAYING:
            return
        self.queue(t)  # the node's work; the seat is freed either way (a lost leave runs out later)
        settle(self.listeners.leave(self.space, token=self.token[cid]))
        self.detach(cid)
        self.set_state(cid, LEFT)
        self.wake_admitter(t)

    def on_admitter(self, t: float, cid: int) -> None:
        if t > self.admitter_due + 1e-9 or t < self.admitter_due - 1e-9:
            return  # a pass that an earlier wake-up replaced
        _, wait = settle(self.listeners.admit(ADMITTER_PERIOD_S))  # type: ignore[misc]
        self.admitter_due = t + wait
        self.at(self.admitter_due, ADMITTER)

    def on_health(self, t: float, cid: int) -> None:
        """The node's health loop: the production Governor, fed what the node would measure."""
        period = self.adm_cfg.health_period_s
        self.drain(t)
        cpu = min(1.0, self.period_work / period + self.background)
        sample = HealthSample.measure(self.period_lag, cpu, self.period_joins)
        self.period_work, self.period_lag, self.period_joins = 0.0, self.backlog_s, []
        self.listeners.health(sample)  # the node's: the governor moves, admission follows, the admitter wakes
        self.level_max = max(self.level_max, self.governor.level)
        self.at(t + period, HEALTH)

    # -- edges ------------------------------------------------------------------------------

    def attach(self, cid: int) -> None:
        if not self.cfg.edges:
            return
        if not self.alive:
            self.edge[cid] = -1
            return
        self.rr = (self.rr + 1) % len(self.alive)
        e = self.alive[self.rr]
        self.edge[cid] = e
        self.edge_load[e] += 1

    def detach(self, cid: int) -> None:
        e = self.edge[cid]
        if e >= 0:
            self.edge_load[e] -= 1
            self.edge[cid] = -1
        elif self.cfg.edges and cid in self.edge_attempts:
            self.edge_attempts.pop(cid)
            self.disconnected -= 1

    def on_fail_edge(self, t: float, cid: int) -> None:
        """The fullest edge is lost: its listeners come back through the others after the
        client's full-jitter backoff; their tokens are still good, so no join is needed."""
        lost = max(self.alive, key=lambda e: self.edge_load[e])
        self.alive.remove(lost)
        self.line_copies[lost] = None
        moved = 0
        for c in range(self.n):
            if self.edge[c] == lost and self.state[c] == PLAYING:
                self.edge[c] = -1
                self.edge_attempts[c] = 1
                self.disconnected += 1
                moved += 1
                self.at(t + backoff_s(1, self.rng), REATTACH, c)
        self.edge_load[lost] = 0
        self.edge_loss = {"at_s": t, "edge": lost, "listeners_moved": moved * self.mult, "back_by_s": None,
                          "stall_listener_s": 0.0, "gap_stall_listener_s": 0.0, "edges_left": len(self.alive),
                          "buffer_s": round(self.buffer_s, 3), "_stall0": self.stall_listener_s}

    def on_reattach(self, t: float, cid: int) -> None:
        if self.state[cid] != PLAYING or cid not in self.edge_attempts:
            return
        if not self.alive:
            n = self.edge_attempts[cid] = min(30, self.edge_attempts[cid] + 1)
            self.at(t + backoff_s(n, self.rng), REATTACH, cid)
            return
        del self.edge_attempts[cid]
        self.disconnected -= 1
        assert self.edge_loss is not None
        gap = t - float(self.edge_loss["at_s"])  # type: ignore[arg-type]
        self.edge_loss["gap_stall_listener_s"] += max(0.0, gap - self.buffer_s) * self.mult  # type: ignore[operator]
        self.attach(cid)
        if self.edge_loss is not None and not self.edge_attempts:
            self.edge_loss["back_by_s"] = round(t - float(self.edge_loss["at_s"]), 2)  # type: ignore[arg-type]

    # -- once a second: load, stalls, the timeline -------------------------------------------

    def on_sample(self, t: float, cid: int) -> None:
        cfg, mult = self.cfg, self.mult
        dt = self.sample_every
        playing_node = self.counts[PLAYING] * self.scale  # real listeners of this node
        renewed = playing_node / (cfg.admission.token_ttl_s / 2)  # this node's seats renewed a second
        media_node = playing_node * self.media_rps if cfg.edges == 0 else 0.0
        self.drain(t)
        if cfg.edges:  # the edges renew tokens and report the seats, a batch per worker per period (edge/renewals.py)
            renew_rps = (len(self.alive) * FANOUT_WORKERS / REPORT_S + renewed * cfg.api_nodes / BATCH) / cfg.api_nodes
            renew_work = renew_rps * cfg.request_cost_s + renewed * cfg.extend_cost_s
        else:  # the node renews each token (a live-playlist reload's 307)
            renew_rps, renew_work = renewed, renewed * cfg.request_cost_s
        self.background = renew_work + media_node * cfg.media_cost_s
        if self.background > self.adm_cfg.max_loop_cpu and not self.warned_background:  # renewals, media
            self.warned_background = True
            self.warnings.append(f"at {t / 60:.1f} min renewals{' and media' if cfg.edges == 0 else ''} alone take "
                                 f"{self.background:.0%} of an API node: add API nodes")
        answer_s = cfg.rtt_s + self.backlog_s
        if answer_s > cfg.admission.token_ttl_s / 2 + cfg.admission.seat_grace_s and not self.late_renewals:
            self.late_renewals = True
            self.warnings.append(f"at {t / 60:.1f} min the node answers after {answer_s:.0f} s: renewals come after "
                                 f"the seats' deadline, so seats would be lost (not modelled further)")
        stalled = self.stalled_now()
        self.stall_listener_s += stalled * dt
        self.stalled_peak = max(self.stalled_peak, stalled)
        requests, work = self.count_requests(t)
        api_rps = (requests / dt + renew_rps) * cfg.api_nodes
        api_cpu = (work / dt + renew_work) * cfg.api_nodes
        joins_ps = self.sample_joins / dt * cfg.api_nodes
        line_rps = self.sample_line_reads * self.scale / dt * cfg.api_nodes
        self.sample_joins = self.sample_line_reads = 0
        origin_rps = (len(self.alive) * self.media_rps if cfg.edges else playing_node * self.media_rps * cfg.api_nodes)
        admitted = self.admitted_total * mult
        prev = self.timeline[-1]["admitted"] if self.timeline else 0
        self.timeline.append({
            "t": round(t, 3), "arrived": (self.n - self.counts[NEW]) * mult, "admitted": admitted,
            "seats_per_s": round((admitted - prev) / dt, 1),  # type: ignore[operator]
            "playing": self.counts[PLAYING] * mult, "waiting": self.counts[WAITING] * mult,
            "joining": self.counts[JOINING] * mult, "failed": self.counts[FAILED] * mult,
            "left": self.counts[LEFT] * mult, "stalled_now": round(stalled), "api_rps": round(api_rps, 1),
            "joins_per_s": round(joins_ps, 1), "api_cpu": round(api_cpu, 3), "line_rps": round(line_rps, 1),
            "origin_rps": round(origin_rps, 1), "edges_alive": len(self.alive),
            "node_backlog_s": round(self.backlog_s, 4), "level": self.governor.level,
            "limit": self.governor.limit * self.mult,
        })
        self.at(t + dt, SAMPLE)

    def stalled_now(self) -> float:
        """Real listeners without audio now: those beyond an edge's capacity (listeners or
        requests/s), those still reconnecting after an edge loss beyond their buffer, or, with
        no edges, the share of a node's media requests it has no time for."""
        cfg, mult = self.cfg, self.mult
        if cfg.edges == 0:
            if self.background <= 1.0:
                return 0.0
            return self.counts[PLAYING] * mult * (1 - 1 / self.background)
        cap = float(cfg.edge_capacity)
        if cfg.edge_rps is not None:
            cap = min(cap, cfg.edge_rps / self.media_rps)
        over = sum(max(0.0, load * mult - cap) for load in self.edge_load)
        reconnecting = 0
        if self.edge_loss is not None and self.now() - T0 - float(self.edge_loss["at_s"]) > self.buffer_s:  # type: ignore[arg-type]
            reconnecting = self.disconnected * mult  # their buffer ran dry
        return over + reconnecting

    # -- the result -------------------------------------------------------------------------

    def result(self) -> dict[str, object]:
        cfg, mult = self.cfg, self.mult
        self.count_requests(max(cfg.horizon_s, self.sampled_at))  # those since the last sample
        if self.edge_loss is not None:
            self.edge_loss["stall_listener_s"] = round(self.stall_listener_s - float(self.edge_loss.pop("_stall0")), 1)  # type: ignore[arg-type]
            if self.edge_loss["back_by_s"] is None and not self.edge_attempts:
                self.edge_loss["back_by_s"] = 0.0
        waits = sorted(a - s for a, s in zip(self.admitted_at, self.arrive_s) if not math.isnan(a))
        joins = sorted(a - s for a, s in zip(self.answered, self.arrive_s) if not math.isnan(a))
        tl = self.timeline
        peak_playing = max((int(r["playing"]) for r in tl), default=0)  # type: ignore[call-overload]
        peak_api = max((float(r["api_rps"]) for r in tl), default=0.0)  # type: ignore[arg-type]
        peak_seats = max((float(r["seats_per_s"]) for r in tl), default=0.0)  # type: ignore[arg-type]
        peak_joins = max((float(r["joins_per_s"]) for r in tl), default=0.0)  # type: ignore[arg-type]
        per_edge = float(cfg.edge_capacity) if cfg.edge_rps is None else min(cfg.edge_capacity, cfg.edge_rps / self.media_rps)
        edges_needed = max(1, math.ceil(peak_playing / per_edge))
        peak_cpu = max((float(r["api_cpu"]) for r in tl), default=0.0)  # type: ignore[arg-type]
        nodes_needed = max(1, math.ceil(peak_cpu / cfg.admission.max_loop_cpu))
        return {
            "config": {**asdict(cfg), "admission": {k: v for k, v in asdict(cfg.admission).items() if k != "secret"}},
            "scale": self.scale, "simulated_clients": self.n, "real_per_simulated": mult,
            "listeners": self.n * mult,
            "admitted": self.admitted_total * mult,
            "playing_end": self.counts[PLAYING] * mult,
            "waiting_end": self.counts[WAITING] * mult,
            "joining_end": (self.counts[JOINING] + self.counts[NEW]) * mult,
            "failed": self.counts[FAILED] * mult,
            "left": self.counts[LEFT] * mult,
            "waiting_max": max((int(r["waiting"]) for r in tl), default=0),  # type: ignore[call-overload]
            "peak_listeners": peak_playing,
            "join_p50_s": _r(quantile(joins, 0.5)), "join_p99_s": _r(quantile(joins, 0.99)),
            "wait_p50_s": _r(quantile(waits, 0.5)), "wait_p99_s": _r(quantile(waits, 0.99)),
            "wait_max_s": _r(waits[-1] if waits else None),
            "stall_listener_s": round(self.stall_listener_s, 1), "stalled_peak": round(self.stalled_peak),
            "degradation_level_max": self.level_max,
            "api_requests": round(self.api_requests * cfg.api_nodes), "joins": self.joins_decided * cfg.api_nodes,
            "line_reads": self.line_reads * mult,
            "plan": {
                "edges_for_zero_stalls": edges_needed,
                "edges_to_survive_one_loss": edges_needed + 1,
                "origin_rps": round((edges_needed + 1) * self.media_rps, 1),
                "origin_rps_with_given_edges": round(cfg.edges * self.media_rps, 1) if cfg.edges else None,
                "api_rps_peak": round(peak_api, 1),
                "joins_per_s_peak": round(peak_joins, 1),
                "api_nodes_needed": nodes_needed,
                "seats_per_s_peak": round(peak_seats, 1),
            },
            "edge_loss": self.edge_loss,
            "warnings": self.warnings,
            "timeline": tl,
        }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 4)
