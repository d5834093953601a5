"""Surge: many listeners join one node at once. Is every join answered, quickly and in order?

    .venv/bin/python bench/surge.py [--joins 10000] [--seconds 10] [--max-listeners 2000] \\
        [--admit-rate R] [--addresses N] [--connections 1000] [--no-poll] [--small] \\
        [--json OUT] [--plot OUT.png]

Starts ``amphi serve --max-listeners 2000`` (plus ``--admit-rate`` if given; the server's
default otherwise) on a free 127.0.0.1 port, puts one Space live (silence, no speaker) and
lets it make its first segment. Then, from this process (aiohttp on uvloop, a pool of
``--connections`` keep-alive connections), ``--joins`` distinct listeners each
``POST /api/spaces/<id>/join`` with ``{}``, spread evenly over ``--seconds``.

A real night comes from many addresses, and the node's defense rightly treats more than a
few fresh joins from one address (or one /24) as a suspect and challenges them. So the
node trusts 127.0.0.1 as a proxy (``--trusted-proxy``, as behind an edge) and each listener
sends every request (join, polls, media) with ``X-Forwarded-For`` set to an address of its
own: ``--addresses`` of them (default: one per listener) in 10.0.0.0/8, ``--per-prefix``
(default 4) in each /24, so the defense sees a surge of people, not an attack.

Per join it records when it was sent, when the answer had arrived, the status and, when
waiting, the position. Every admitted listener (200) then fetches its first audio the way
a player starts: the playlist from the join answer (relative URIs in it carry the token),
the init segment, and the first part or segment the playlist lists. First audio is the time
from the join answer to having that part's bytes.

A waiting listener (202) comes back with its ticket after ``retry_after_s``, as a client
does, until it is admitted or the run ends ``--linger`` seconds after the last join
(``--no-poll``: it never comes back). Polls are counted apart from the first answers.

Checks (exit 1 if one fails, 2 on an error):

* every join answered, none with an error; every first answer is 200 or 202 (not a
  challenge, not a refusal);
* p99 of the first answer's time <= ``--answer-p99`` (1 s);
* listeners admitted <= ``--max-listeners``, and equal to what the node reports
  (``listeners`` and ``admitted_total`` of the Space);
* the line is FIFO: every first waiting answer puts the listener at the back of the line
  (``position == waiting`` in the answer); if no seat was handed out from the line during
  the surge (the seats filled before the line formed), the positions are exactly 1..W;
* 0 connection errors, also on polls and media requests;
* p99 of first audio <= ``--audio-p99`` (3 s).

``--small`` (or ``AMPHI_BENCH_SMALL=1``): 600 joins over 2 s against 100 seats, polls for
3 s, about 15 s; the same checks. Everything goes to 127.0.0.1; the run stops by itself,
about 35 s with the defaults. The
client's CPU is reported beside the node's, so a reader can tell whether the client was the
bottleneck.
"""

from __future__ import annotations

import argparse
import os
import asyncio
import json
import signal
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import numpy as np
import psutil
import uvloop

from harness import (TRUSTED_PROXY, NodeProcess, split_cores, client_address, end_space, exit_on_sigterm, first_media,
                     machine_busy_s, node_stats, process_cpu_s, run, small_mode, space_status, start_space)

from amphi.core.files import raise_open_files

SETTLE_S = 5.0  # after the start, before the surge: the first segment (3.6 s) exists
REQUEST_TIMEOUT_S = 10.0  # per HTTP request, including the wait for a pooled connection
DRAIN_TIMEOUT_S = 15.0  # after the poll window, for requests still in flight
PROGRESS_EVERY_S = 1.0
JSON_HEADERS = {"content-type": "application/json"}
@dataclass(slots=True)
class Join:
    """One listener. Times are seconds from the start of the surge."""

    i: int
    scheduled: float
    address: str  # X-Forwarded-For of all its requests
    sent: float = float("nan")
    answered: float = float("nan")
    status: int = 0  # of the first answer; 0 if none
    position: int | None = None  # of the first waiting answer
    waiting: int | None = None  # the line's length in that answer
    order: str | None = None  # "fifo" or "draw_at_start"
    entry: int | None = None  # the node's arrival number, read from the ticket, if it has one
    error: str | None = None  # of the first answer
    polls: int = 0
    admitted_at: float | None = None  # when it got a token (first answer or a poll)
    via_poll: bool = False
    audio_s: float | None = None  # admitted answer -> first part's bytes
    audio_error: str | None = None

    @property
    def answer_s(self) -> float:
        return self.answered - self.sent


@dataclass
class Counts:
    """Running totals, for the progress line and the table."""

    sent: int = 0
    answered: int = 0
    join_errors: int = 0  # first joins that got no answer
    admitted: int = 0  # first answers
    waiting: int = 0  # first answers
    other: int = 0  # first answers that are neither
    polls: int = 0
    poll_admitted: int = 0
    poll_other: int = 0  # poll answers other than 200, 202
    audio_ok: int = 0
    audio_failed: int = 0
    connection_errors: int = 0  # any request
    timeouts: int = 0  # any request
    other_errors: int = 0  # any request: bad JSON, unexpected answer


def classify(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectionError):
        return "connection"
    return "other"


def ticket_entry(ticket: object) -> int | None:
    """The node's entry number at the front of a ticket (``<entry>.<issued>.<mac>``)."""
    if isinstance(ticket, str) and ticket.split(".", 1)[0].isdigit():
        return int(ticket.split(".", 1)[0])
    return None


class Surge:
    def __init__(self, server: str, space_id: str, args: argparse.Namespace) -> None:
        self.server = server
        self.space_id = space_id
        self.args = args
        self.join_url = f"{server}/api/spaces/{space_id}/join"
        step = args.seconds / args.joins
        self.joins = [Join(i, i * step, client_address(i % args.addresses, args.per_prefix))
                      for i in range(args.joins)]
        self.counts = Counts()
        self.poll_answer_s: list[float] = []
        self.poll_times: list[float] = []  # when each answered poll was sent
        self.poll_statuses: Counter[int] = Counter()
        self.error_kinds: Counter[str] = Counter()
        self.samples: list[dict[str, float]] = []  # the progress lines, for the JSON
        self.t0 = 0.0
        self.polling_until = float("inf")
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _error(self, exc: BaseException, where: str) -> str:
        kind = classify(exc)
        if kind == "connection":
            self.counts.connection_errors += 1
        elif kind == "timeout":
            self.counts.timeouts += 1
        else:
            self.counts.other_errors += 1
        text = f"{where}: {kind}: {type(exc).__name__} {exc}".strip()
        self.error_kinds[f"{where}: {kind}: {type(exc).__name__}"] += 1
        return text

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None
        return self._session

    async def _post_join(self, j: Join, body: bytes) -> tuple[int, dict[str, object], float | None]:
        headers = {**JSON_HEADERS, "x-forwarded-for": j.address}
        async with self.session.post(self.join_url, data=body, headers=headers) as r:
            raw = await r.read()
            retry = r.headers.get("retry-after")
        try:
            answer = json.loads(raw)
        except ValueError:
            raise ValueError(f"HTTP {r.status}: answer is not JSON: {raw[:80]!r}") from None
        if not isinstance(answer, dict):
            raise ValueError(f"HTTP {r.status}: answer is not a JSON object")
        return r.status, answer, float(retry) if retry and retry.replace(".", "", 1).isdigit() else None

    # -- one listener ---------------------------------------------------------------------

    async def listener(self, j: Join) -> None:
        c = self.counts
        j.sent = self.now()
        c.sent += 1
        try:
            status, answer, retry_header = await self._post_join(j, b"{}")
        except Exception as exc:  # noqa: BLE001 - recorded and counted
            j.answered = self.now()
            j.error = self._error(exc, "join")
            c.join_errors += 1
            return
        j.answered = self.now()
        j.status = status
        c.answered += 1
        if status == 200 and answer.get("status") == "admitted":
            c.admitted += 1
            self._admitted(j, answer, via_poll=False)
        elif status == 202 and answer.get("status") == "waiting":
            c.waiting += 1
            j.position = _int_or_none(answer.get("position"))
            j.waiting = _int_or_none(answer.get("waiting"))
            j.order = str(answer.get("order"))
            j.entry = ticket_entry(answer.get("ticket"))
            if self.args.poll:
                await self._wait_in_line(j, answer, retry_header)
        else:
            c.other += 1
            j.error = f"join: HTTP {status} {answer.get('error', answer.get('status'))}"
            self.error_kinds[f"join: HTTP {status} {answer.get('error', answer.get('status'))}"] += 1

    async def _wait_in_line(self, j: Join, answer: dict[str, object], retry_header: float | None) -> None:
        """Polls with the ticket after each ``retry_after_s`` until admitted or the window ends."""
        ticket = answer.get("ticket")
        body = json.dumps({"ticket": ticket}).encode()
        delay = _retry_after(answer, retry_header)
        while True:
            if self.now() + delay >= self.polling_until:
                return
            await asyncio.sleep(delay)
            sent = self.now()
            j.polls += 1
            self.counts.polls += 1
            try:
                status, answer, retry_header = await self._post_join(j, body)
            except Exception as exc:  # noqa: BLE001 - counted; this listener gives up
                self._error(exc, "poll")
                return
            self.poll_answer_s.append(self.now() - sent)
            self.poll_times.append(sent)
            self.poll_statuses[status] += 1
            if status == 200 and answer.get("status") == "admitted":
                self.counts.poll_admitted += 1
                self._admitted(j, answer, via_poll=True)
                return
            if status != 202:
                self.counts.poll_other += 1
                if status not in (429, 503):
                    self.error_kinds[f"poll: HTTP {status} {answer.get('error')}"] += 1
                    return
            delay = _retry_after(answer, retry_header)

    def _admitted(self, j: Join, answer: dict[str, object], *, via_poll: bool) -> None:
        j.admitted_at = self.now()
        j.via_poll = via_poll
        playlist = answer.get("media_playlist")
        if not isinstance(playlist, str):
            j.audio_error = "the admitted answer has no playlist"
            self.counts.audio_failed += 1
            return
        self._spawn(self.first_audio(j, playlist))

    async def first_audio(self, j: Join, playlist: str) -> None:
        """Playlist, init segment, first part or segment listed: a player's start."""
        assert j.admitted_at is not None
        headers = {"x-forwarded-for": j.address}
        try:
            async with self.session.get(playlist, headers=headers) as r:
                text = await r.text()
                if r.status != 200:
                    raise ValueError(f"playlist: HTTP {r.status} {text[:80]}")
            init_url, media_url = first_media(playlist, text)
            for url in (init_url, media_url):
                async with self.session.get(url, headers=headers) as r:
                    data = await r.read()
                    if r.status != 200 or not data:
                        raise ValueError(f"{url.rsplit('/', 1)[-1]}: HTTP {r.status}, {len(data)} bytes")
        except ValueError as exc:  # an answer that is not media
            j.audio_error = f"media: {exc}"
            self.counts.other_errors += 1
            self.counts.audio_failed += 1
            self.error_kinds[f"media: {str(exc).split(',')[0][:60]}"] += 1
            return
        except Exception as exc:  # noqa: BLE001 - recorded and counted
            j.audio_error = self._error(exc, "media")
            self.counts.audio_failed += 1
            return
        j.audio_s = self.now() - j.admitted_at
        self.counts.audio_ok += 1

    # -- the run --------------------------------------------------------------------------

    async def dispatch(self) -> None:
        for j in self.joins:
            delay = j.scheduled - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            self._spawn(self.listener(j))

    async def progress(self, node_pid: int) -> None:
        me = psutil.Process()
        last_wall, last_me, last_node, last_all = self.now(), _own_cpu(me), process_cpu_s(node_pid), machine_busy_s()
        c = self.counts
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            wall, mine, node, everything = self.now(), _own_cpu(me), process_cpu_s(node_pid), machine_busy_s()
            client_pct = 100 * (mine - last_me) / (wall - last_wall)
            node_pct = 100 * (node - last_node) / (wall - last_wall)
            others_pct = max(0.0, 100 * (everything - last_all) / (wall - last_wall) - client_pct - node_pct)
            last_wall, last_me, last_node, last_all = wall, mine, node, everything
            in_flight = c.sent - c.answered - c.join_errors
            self.samples.append({"t": wall, "sent": c.sent, "answered": c.answered, "admitted": c.admitted,
                                 "waiting": c.waiting, "polls": c.polls, "poll_admitted": c.poll_admitted,
                                 "audio_ok": c.audio_ok, "errors": c.connection_errors + c.timeouts + c.other_errors,
                                 "client_cpu_percent": client_pct, "node_cpu_percent": node_pct,
                                 "others_cpu_percent": others_pct})
            print(f"  {wall:5.1f} s: sent {c.sent}/{len(self.joins)}, answered {c.answered} (admitted {c.admitted}, "
                  f"waiting {c.waiting}, other {c.other}), in flight {in_flight}; polls {c.polls} "
                  f"(+{c.poll_admitted} seated); first audio {c.audio_ok}; "
                  f"errors {c.connection_errors + c.timeouts + c.other_errors}; "
                  f"CPU client {client_pct:.0f} %, node {node_pct:.0f} %, others {others_pct:.0f} %", flush=True)

    async def run(self, node_pid: int) -> dict[str, float]:
        args = self.args
        connector = aiohttp.TCPConnector(limit=args.connections, force_close=args.new_connections,
                                         enable_cleanup_closed=False)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        me = psutil.Process()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self._session = session
            cpu_me, cpu_node, cpu_all = _own_cpu(me), process_cpu_s(node_pid), machine_busy_s()
            self.t0 = time.perf_counter()
            self.polling_until = args.seconds + args.linger
            reporter = asyncio.create_task(self.progress(node_pid))
            try:
                await self.dispatch()
                surge_cpu_me, surge_cpu_node, surge_cpu_all = _own_cpu(me), process_cpu_s(node_pid), machine_busy_s()
                surge_wall = self.now()
                # the poll window, then whatever is still in flight
                while self.now() < self.polling_until and self._tasks:
                    await asyncio.sleep(0.1)
                if self._tasks:
                    await asyncio.wait(list(self._tasks), timeout=DRAIN_TIMEOUT_S)
                wall = self.now()
                end_cpu_me, end_cpu_node, end_cpu_all = _own_cpu(me), process_cpu_s(node_pid), machine_busy_s()
            finally:
                reporter.cancel()
                for task in list(self._tasks):
                    task.cancel()
                if self._tasks:
                    await asyncio.wait(list(self._tasks), timeout=5)
        stuck = sum(1 for j in self.joins if j.status == 0 and j.error is None)
        return {
            "surge_wall_s": surge_wall, "wall_s": wall, "unfinished": stuck,
            "client_cpu_s_surge": surge_cpu_me - cpu_me, "node_cpu_s_surge": surge_cpu_node - cpu_node,
            "client_cpu_s": end_cpu_me - cpu_me, "node_cpu_s": end_cpu_node - cpu_node,
            "machine_cpu_s_surge": surge_cpu_all - cpu_all, "machine_cpu_s": end_cpu_all - cpu_all,
        }


def _own_cpu(me: psutil.Process) -> float:
    t = me.cpu_times()
    return t.user + t.system


def _int_or_none(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _retry_after(answer: dict[str, object], header: float | None) -> float:
    v = answer.get("retry_after_s")
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
        return float(v)
    return header if header is not None else 1.0


# -- figures --------------------------------------------------------------------------------


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, dtype=np.float64)
    return {"n": int(a.size), "min": float(a.min()), "p50": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)), "max": float(a.max()),
            "mean": float(a.mean())}


def inversions(seq: list[int]) -> int:
    """Pairs i < j with seq[i] > seq[j] (merge sort, O(n log n))."""
    def sort(a: list[int]) -> tuple[list[int], int]:
        if len(a) <= 1:
            return a, 0
        mid = len(a) // 2
        left, x = sort(a[:mid])
        right, y = sort(a[mid:])
        out, count, i, k = [], x + y, 0, 0
        while i < len(left) and k < len(right):
            if left[i] <= right[k]:
                out.append(left[i])
                i += 1
            else:
                out.append(right[k])
                count += len(left) - i
                k += 1
        out += left[i:]
        out += right[k:]
        return out, count

    return sort(seq)[1]


def order_figures(values_in_send_order: list[int]) -> dict[str, float]:
    """How far a sequence that should increase is from increasing."""
    n = len(values_in_send_order)
    pairs = n * (n - 1) // 2
    inv = inversions(values_in_send_order)
    ranks = np.argsort(np.argsort(np.asarray(values_in_send_order), kind="stable"), kind="stable")
    displacement = int(np.abs(ranks - np.arange(n)).max()) if n else 0
    return {"pairs": pairs, "out_of_order_pairs": inv, "out_of_order_fraction": inv / pairs if pairs else 0.0,
            "max_displacement": displacement}


def summarize(surge: Surge, timing: dict[str, float], before: dict[str, object], after: dict[str, object],
              node: dict[str, object], args: argparse.Namespace, cores: int) -> dict[str, object]:
    joins = surge.joins
    c = surge.counts
    answered = [j for j in joins if j.status]
    waiting = [j for j in joins if j.status == 202]
    fifo = [j for j in waiting if j.order == "fifo"]
    admitted = [j for j in joins if j.admitted_at is not None]
    by_send = sorted(fifo, key=lambda j: j.sent)

    positions = sorted(j.position for j in waiting if j.position is not None)
    w = len(waiting)
    duplicates = len(positions) - len(set(positions))
    permutation = positions == list(range(1, w + 1))
    at_back = sum(1 for j in fifo if j.position is not None and j.position == j.waiting)
    # the line cannot move while every seat is taken: then positions must be exactly 1..W
    line_static = c.admitted >= args.max_listeners
    if line_static and all(j.position is not None for j in by_send):
        order = order_figures([j.position for j in by_send])  # type: ignore[misc]
        order["by"] = "position"
    elif by_send and all(j.entry is not None for j in by_send):
        order = order_figures([j.entry for j in by_send])  # type: ignore[misc]
        order["by"] = "ticket entry number"
    else:
        order = {}

    def delta(key: str) -> int | None:
        a, b = after.get(key), before.get(key, 0)
        return a - b if isinstance(a, int) and isinstance(b, int) else None  # type: ignore[operator]

    served_s = timing["wall_s"]
    answer = stats([j.answer_s for j in answered])
    audio = stats([j.audio_s for j in admitted if j.audio_s is not None])
    lag = stats([j.sent - j.scheduled for j in joins if j.sent == j.sent])
    return {
        "settings": {"joins": args.joins, "seconds": args.seconds, "max_listeners": args.max_listeners,
                     "admit_rate": args.admit_rate, "connections": args.connections,
                     "addresses": args.addresses, "per_prefix": args.per_prefix, "small": args.small,
                     "new_connections": args.new_connections, "poll": args.poll, "linger_s": args.linger,
                     "answer_p99_target_s": args.answer_p99, "audio_p99_target_s": args.audio_p99,
                     "cores": cores},
        "first_answers": {"sent": c.sent, "answered": c.answered, "admitted": c.admitted, "waiting": c.waiting,
                          "other": c.other, "errors": sum(1 for j in joins if j.error and not j.status),
                          "unanswered": sum(1 for j in joins if not j.status)},
        "answer_s": answer,
        "schedule_lag_s": lag,
        "first_audio_s": audio,
        "first_audio": {"admitted": len(admitted), "ok": c.audio_ok, "failed": c.audio_failed,
                        "errors": Counter(j.audio_error for j in admitted if j.audio_error).most_common(5)},
        "polls": {"sent": c.polls, "admitted": c.poll_admitted, "other": c.poll_other,
                  "statuses": dict(surge.poll_statuses), "answer_s": stats(surge.poll_answer_s)},
        "errors": {"connection": c.connection_errors, "timeout": c.timeouts, "other": c.other_errors,
                   "kinds": dict(surge.error_kinds.most_common(10))},
        "admission": {"client_admitted": len(admitted), "client_admitted_first": c.admitted,
                      "client_admitted_from_line": c.poll_admitted,
                      "server_listeners": after.get("listeners"), "server_admitted_total": delta("admitted_total"),
                      "server_waiting": after.get("waiting"), "server_peak_listeners": after.get("peak_listeners"),
                      "client_still_waiting": sum(1 for j in waiting if j.admitted_at is None)},
        "line": {"waiting_answers": w, "fifo_answers": len(fifo), "positions_are_1_to_W": permutation,
                 "duplicate_positions": duplicates, "min_position": positions[0] if positions else None,
                 "max_position": positions[-1] if positions else None,
                 "at_back_of_line": at_back, "line_static": line_static,
                 "orders": dict(Counter(j.order for j in waiting)), "vs_send_order": order},
        "cpu": {"cores": cores, "client_percent_surge": 100 * timing["client_cpu_s_surge"] / timing["surge_wall_s"],
                "node_percent_surge": 100 * timing["node_cpu_s_surge"] / timing["surge_wall_s"],
                "client_percent": 100 * timing["client_cpu_s"] / served_s,
                "node_percent": 100 * timing["node_cpu_s"] / served_s,
                "client_peak_1s_percent": max((s["client_cpu_percent"] for s in surge.samples), default=0.0),
                "node_peak_1s_percent": max((s["node_cpu_percent"] for s in surge.samples), default=0.0),
                "others_percent_surge": max(0.0, 100 * (timing["machine_cpu_s_surge"] - timing["client_cpu_s_surge"]
                                                        - timing["node_cpu_s_surge"]) / timing["surge_wall_s"]),
                "others_percent": max(0.0, 100 * (timing["machine_cpu_s"] - timing["client_cpu_s"]
                                                  - timing["node_cpu_s"]) / served_s)},
        "timing": timing,
        "status_before": before,
        "status_after": after,
        "node_stats": node,
        "progress": surge.samples,
        "polls_sent_answer_s": [[round(t, 4), round(a, 4)] for t, a in zip(surge.poll_times, surge.poll_answer_s)],
        "joins": [asdict(j) for j in joins],
    }


def checks(summary: dict[str, object], args: argparse.Namespace) -> list[tuple[bool, str]]:
    first = summary["first_answers"]
    answer = summary["answer_s"]
    audio = summary["first_audio_s"]
    adm = summary["admission"]
    line = summary["line"]
    err = summary["errors"]
    fa = summary["first_audio"]
    assert isinstance(first, dict) and isinstance(answer, dict) and isinstance(audio, dict)
    assert isinstance(adm, dict) and isinstance(line, dict) and isinstance(err, dict) and isinstance(fa, dict)
    out = [
        (first["answered"] == args.joins, f"every join answered: {first['answered']}/{args.joins}"),
        (first["other"] == 0, f"every first answer admitted or waiting: {first['other']} other"),
        (bool(answer) and answer["p99"] <= args.answer_p99,
         f"answer time p99 {answer.get('p99', float('nan')):.3f} s <= {args.answer_p99:g} s"),
        (adm["client_admitted"] <= args.max_listeners,
         f"admitted {adm['client_admitted']} <= {args.max_listeners} seats"),
        (adm["client_admitted"] == adm["server_listeners"] == adm["server_admitted_total"],
         f"admitted {adm['client_admitted']} == node's listeners {adm['server_listeners']} "
         f"== node's admitted_total {adm['server_admitted_total']}"),
        (line["at_back_of_line"] == line["fifo_answers"],
         f"each waiting answer at the back of the line: {line['at_back_of_line']}/{line['fifo_answers']}"),
    ]
    if line["line_static"]:
        out.append((line["positions_are_1_to_W"] and line["duplicate_positions"] == 0,
                    f"positions exactly 1..{line['waiting_answers']}: {line['positions_are_1_to_W']}, "
                    f"{line['duplicate_positions']} duplicates"))
    out.append((err["connection"] == 0, f"connection errors: {err['connection']}"))
    out.append((fa["failed"] == 0 and bool(audio) and audio["p99"] <= args.audio_p99,
                f"first audio p99 {audio.get('p99', float('nan')):.3f} s <= {args.audio_p99:g} s, "
                f"{fa['failed']} failed of {fa['admitted']}"))
    return out


def print_table(summary: dict[str, object], results: list[tuple[bool, str]]) -> None:
    s = summary
    st, first, adm, line, cpu, polls, err = (s["settings"], s["first_answers"], s["admission"], s["line"], s["cpu"],
                                             s["polls"], s["errors"])
    assert isinstance(st, dict) and isinstance(first, dict) and isinstance(adm, dict) and isinstance(line, dict)
    assert isinstance(cpu, dict) and isinstance(polls, dict) and isinstance(err, dict)
    print()
    print(f"surge: {st['joins']} joins over {st['seconds']:g} s, node --max-listeners {st['max_listeners']} "
          f"--admit-rate {st['admit_rate'] if st['admit_rate'] else '(server default)'}; "
          f"{st['connections']} client connections, {'polling' if st['poll'] else 'no polling'}; "
          f"from {st['addresses']} client addresses ({st['per_prefix']} a /24)")
    print(f"{'first answers':44s} {'count':>7s}")
    for label, key in (("admitted (200)", "admitted"), ("waiting (202)", "waiting"),
                       ("other answers (429, 503, ...)", "other"), ("no answer (error)", "unanswered")):
        print(f"  {label:42s} {first[key]:7d}")
    print(f"{'seconds':44s} {'n':>6s} {'p50':>7s} {'p90':>7s} {'p99':>7s} {'max':>7s}")
    for label, key in (("join answer time (send -> answer)", "answer_s"),
                       ("first audio (answer -> part bytes)", "first_audio_s"),
                       ("client lag behind its schedule", "schedule_lag_s")):
        v = s[key]
        assert isinstance(v, dict)
        if v:
            print(f"  {label:42s} {v['n']:6d} {v['p50']:7.3f} {v['p90']:7.3f} {v['p99']:7.3f} {v['max']:7.3f}")
    pa = polls["answer_s"]
    if pa:
        print(f"  {'poll answer time (with the ticket)':42s} {pa['n']:6d} {pa['p50']:7.3f} {pa['p90']:7.3f} "
              f"{pa['p99']:7.3f} {pa['max']:7.3f}")
    print(f"{'seats':44s} {'client':>7s} {'node':>7s}")
    print(f"  {'listeners holding a seat at the end':42s} {adm['client_admitted']:7d} "
          f"{_fmt(adm['server_listeners']):>7s}")
    print(f"  {'  admitted at once':42s} {adm['client_admitted_first']:7d}")
    print(f"  {'  admitted from the line (polls)':42s} {adm['client_admitted_from_line']:7d}")
    print(f"  {'admitted_total (during the run)':42s} {adm['client_admitted']:7d} "
          f"{_fmt(adm['server_admitted_total']):>7s}")
    print(f"  {'still waiting at the end':42s} {adm['client_still_waiting']:7d} {_fmt(adm['server_waiting']):>7s}")
    print(f"  {'peak_listeners':42s} {'':7s} {_fmt(adm['server_peak_listeners']):>7s}")
    order = line["vs_send_order"]
    print("line")
    print(f"  positions {line['min_position']}..{line['max_position']} over {line['waiting_answers']} waiting answers, "
          f"{line['duplicate_positions']} duplicates; exactly 1..W: {line['positions_are_1_to_W']}"
          + ("" if line["line_static"] else " (not required: seats were handed out from the line during the surge)"))
    print(f"  at the back of the line when answered (position == waiting): {line['at_back_of_line']}/"
          f"{line['fifo_answers']}; orders {line['orders']}")
    if order:
        print(f"  vs send order ({order['by']}): {order['out_of_order_pairs']} of {order['pairs']} pairs out of order "
              f"({100 * order['out_of_order_fraction']:.3f} %), max displacement {order['max_displacement']}")
    print(f"polls: {polls['sent']} sent, {polls['admitted']} admitted, statuses {polls['statuses']}")
    print(f"errors: {err['connection']} connection, {err['timeout']} timeout, {err['other']} other"
          + (f"; {err['kinds']}" if err["kinds"] else ""))
    print(f"CPU, % of one core ({cpu['cores']} cores here)   client   node  other processes")
    print(f"  {'during the joins':38s} {cpu['client_percent_surge']:6.0f} {cpu['node_percent_surge']:6.0f} "
          f"{cpu['others_percent_surge']:8.0f}")
    print(f"  {'whole run (joins, polls, drain)':38s} {cpu['client_percent']:6.0f} {cpu['node_percent']:6.0f} "
          f"{cpu['others_percent']:8.0f}")
    print(f"  {'busiest second':38s} {cpu['client_peak_1s_percent']:6.0f} {cpu['node_peak_1s_percent']:6.0f}")
    node = s["node_stats"]
    if isinstance(node, dict) and node.get("admission"):
        print(f"node at the end: admission {node.get('admission')}; degradation {node.get('degradation')}")
    print("checks")
    for ok, text in results:
        print(f"  {'ok  ' if ok else 'MISS'} {text}")


def _fmt(v: object) -> str:
    return "?" if v is None else str(v)


def plot(summary: dict[str, object], path: str, args: argparse.Namespace) -> None:
    from amphi.core.extras import pyplot

    plt = pyplot("bench/surge.py's figure")

    joins = summary["joins"]
    assert isinstance(joins, list)
    answered = [j for j in joins if j["status"]]
    answer = np.array([j["answered"] - j["sent"] for j in answered])
    audio = np.array([j["audio_s"] for j in joins if j["audio_s"] is not None])
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    (ax1, ax2), (ax3, ax4) = axes
    colours = {200: "#55a868", 202: "#4c72b0"}
    for status, label in ((200, "admitted"), (202, "waiting")):
        pts = [j for j in answered if j["status"] == status]
        ax1.scatter([j["sent"] for j in pts], [j["answered"] - j["sent"] for j in pts], s=2, c=colours[status],
                    label=f"{label} ({len(pts)})")
    other = [j for j in answered if j["status"] not in colours]
    if other:
        ax1.scatter([j["sent"] for j in other], [j["answered"] - j["sent"] for j in other], s=4, c="#c44e52",
                    label=f"other ({len(other)})")
    ax1.axhline(args.answer_p99, color="red", linestyle="--", linewidth=1, label=f"p99 target {args.answer_p99:g} s")
    ax1.set_yscale("log")
    ax1.set_xlabel("sent (s from the start of the surge)")
    ax1.set_ylabel("answer time (s)")
    ax1.set_title("join answer time over the surge")
    ax1.legend(fontsize=8, markerscale=4)
    if answer.size:
        ax2.hist(answer, bins=60, color="#4c72b0")
        ax2.set_yscale("log")
        ax2.axvline(float(np.percentile(answer, 99)), color="black", linestyle="--", linewidth=1,
                    label=f"p99 {np.percentile(answer, 99):.3f} s")
        ax2.legend(fontsize=8)
    ax2.set_xlabel("answer time (s)")
    ax2.set_ylabel("joins")
    ax2.set_title("join answer time, histogram")
    for ax, values, target, title in ((ax3, answer, args.answer_p99, "join answer time, CDF"),
                                      (ax4, audio, args.audio_p99, "first audio (answer -> part bytes), CDF")):
        if values.size:
            x = np.sort(values)
            ax.plot(x, np.arange(1, x.size + 1) / x.size, color="#4c72b0")
            ax.axvline(target, color="red", linestyle="--", linewidth=1, label=f"p99 target {target:g} s")
            ax.axhline(0.99, color="grey", linestyle=":", linewidth=1)
            ax.set_xscale("log")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xlabel("seconds")
        ax.set_ylabel("fraction")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------


async def measure(node: NodeProcess, space_id: str, args: argparse.Namespace) -> tuple[Surge, dict[str, float]]:
    me = asyncio.current_task()
    assert me is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, me.cancel)  # clean up, then exit
    surge = Surge(node.url, space_id, args)
    timing = await surge.run(node.pid)
    return surge, timing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--joins", type=int, default=10_000, help="listeners joining (default 10000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="spread the joins evenly over this (default 10)")
    parser.add_argument("--max-listeners", type=int, default=2000, help="the node's seat ceiling (default 2000)")
    parser.add_argument("--admit-rate", type=float, default=None,
                        help="the node's --admit-rate, seats per second (default: the server's default)")
    parser.add_argument("--connections", type=int, default=1000, help="client connection pool size (default 1000)")
    parser.add_argument("--addresses", type=int, default=None,
                        help="client addresses the joins come from (X-Forwarded-For; default: one per listener)")
    parser.add_argument("--per-prefix", type=int, default=4, help="client addresses in each /24 (default 4)")
    parser.add_argument("--no-split", dest="split", action="store_false",
                        help="let the node and the client share every core (default: the node on the first core, "
                             "the client on the others, as they would be on two machines)")
    parser.add_argument("--new-connections", action="store_true",
                        help="a new TCP connection per request instead of keep-alive")
    parser.add_argument("--no-poll", dest="poll", action="store_false",
                        help="waiting listeners never come back with their ticket")
    parser.add_argument("--linger", type=float, default=15.0,
                        help="waiting listeners keep polling this long after the last join (default 15)")
    parser.add_argument("--answer-p99", type=float, default=1.0, help="target: p99 join answer time (s, default 1)")
    parser.add_argument("--audio-p99", type=float, default=3.0, help="target: p99 first audio (s, default 3)")
    parser.add_argument("--json", metavar="OUT", help="write the figures and every join as JSON")
    parser.add_argument("--plot", metavar="OUT.png", help="write answer-time and first-audio plots")
    small_mode(parser, joins=600, seconds=2.0, max_listeners=100, connections=100, linger=3.0)
    args = parser.parse_args()
    if args.addresses is None:
        args.addresses = args.joins
    if min(args.joins, args.max_listeners, args.connections, args.addresses, args.per_prefix) < 1 or args.seconds <= 0:
        parser.error("--joins, --seconds, --max-listeners, --connections, --addresses and --per-prefix must be positive")
    if args.per_prefix > 254:
        parser.error("--per-prefix is at most 254 (hosts in a /24)")
    exit_on_sigterm()

    files = raise_open_files()  # before the node starts: it inherits the limit
    if files < args.connections + 100:
        print(f"warning: open-file limit {files} is low for {args.connections} connections", file=sys.stderr)
    serve_args = ["--max-listeners", str(args.max_listeners), "--trusted-proxy", TRUSTED_PROXY]
    if args.admit_rate is not None:
        serve_args += ["--admit-rate", f"{args.admit_rate:g}"]
    total = 3 + SETTLE_S + args.seconds + (args.linger if args.poll else 0) + 3
    print(f"surge: {args.joins} joins over {args.seconds:g} s against --max-listeners {args.max_listeners}; "
          f"about {total:.0f} s", flush=True)
    client_cpus = split_cores() if args.split else ()  # the node starts on the first core
    node = NodeProcess(args=serve_args)
    with node:
        if client_cpus:  # and this process, the client, on the others: neither slows the other
            os.sched_setaffinity(0, client_cpus)
            print(f"node on core {sorted(os.sched_getaffinity(node.pid))}, client on {list(client_cpus)} "
                  "(--no-split: shared)", flush=True)
        print(f"node {node.url} (pid {node.pid}), amphi serve {' '.join(serve_args)}, data in {node.dir}", flush=True)
        space = start_space(node.url, "surge bench", join=False)
        print(f"Space {space.id} live; settling {SETTLE_S:.0f} s", flush=True)
        time.sleep(SETTLE_S)
        before = space_status(node.url, space.id)
        try:
            surge, timing = uvloop.run(measure(node, space.id, args))
        except asyncio.CancelledError:
            raise SystemExit(128 + signal.SIGTERM) from None  # the only thing that cancels it
        finally:
            exit_on_sigterm()  # the event loop restored the default handler when it closed
        if not node.alive():
            raise RuntimeError("the node exited during the surge")
        after = space_status(node.url, space.id)
        stats_now = node_stats(node.url)
        end_space(node.url, space)

    summary = summarize(surge, timing, before, after, stats_now, args, psutil.cpu_count() or 0)
    results = checks(summary, args)
    summary["checks"] = [{"ok": ok, "check": text} for ok, text in results]
    print_table(summary, results)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=str))
        print(f"wrote {args.json}")
    if args.plot:
        plot(summary, args.plot, args)
        print(f"wrote {args.plot}")
    missed = [text for ok, text in results if not ok]
    print("FAIL: " + "; ".join(missed) if missed else "PASS: every check met")
    return 1 if missed else 0


if __name__ == "__main__":
    run(main)
