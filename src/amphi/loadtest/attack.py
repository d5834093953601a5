"""Attackers for ``amphi loadtest --attack``: floods from many source addresses on loopback,
bounded in count and time, in a process of their own next to the listeners.

    join-flood  POST join {} at the rate, never coming back (no media, no polls, no solving)
    bad-token   media GETs with forged, expired-looking and foreign tokens at the rate
    replay      captured credentials again and again: one real join's solved challenge (if it
                had to solve one), its ticket as a fresh poll, its token on another Space
    slowloris   sockets that send a request head one line at a time and never finish it, opened
                at the rate up to ``max_connections`` open at once; each reopens when cut off

Source addresses: ``sources`` addresses spread over the /24s 127.200.0.0 .. 127.200.3.0 (a
botnet's few networks; on Linux all of 127.0.0.0/8 is loopback). Only loopback servers are
attacked: the attack refuses any other host.

Every request's outcome is counted: ``sent``, ``by_status`` and ``by_error`` (the JSON error
code), ``refused`` (any 4xx/5xx), ``accepted`` (2xx/3xx: the defense let it through) and
transport errors; slowloris counts sockets ``opened`` and ``cut_off`` by the server, and how long
each lasted.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import Counter
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection as Pipe

import orjson

from amphi.defense.pow import solve
from amphi.loadtest.http import Connection, HttpError, Response, is_loopback, split_url
from amphi.loadtest.stats import Histogram, rounded

ATTACKS = ("join-flood", "bad-token", "replay", "slowloris")
SLOW_LINE_S = 2.0  # a slowloris socket sends one more header line this often
MAX_WORKERS = 256  # concurrent request loops of a flood (each its own connection and address)


@dataclass(frozen=True)
class AttackPlan:
    kind: str
    server: str  # the node's base URL
    space: str
    rate: float  # requests (slowloris: new sockets) per second
    start_s: float = 0.0  # from T0
    duration_s: float = 10.0
    sources: int = 64  # distinct source addresses
    max_connections: int = 5000  # slowloris: sockets open at once at most
    seed: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ValueError(f"unknown attack {self.kind!r}; one of {', '.join(ATTACKS)}")
        if self.rate <= 0 or self.duration_s <= 0 or self.sources < 1:
            raise ValueError("an attack needs a positive rate, duration and number of sources")
        if not is_loopback(split_url(self.server)[0]):
            raise ValueError("attacks are only sent to a server on 127.0.0.0/8")


def attack_source(i: int) -> str:
    return f"127.200.{i % 4}.{i // 4 % 250 + 1}"


class Attack:
    def __init__(self, plan: AttackPlan) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed * 7919)
        self.host, self.port, _ = split_url(plan.server)
        self.sent = 0
        self.by_status: Counter[str] = Counter()
        self.by_error: Counter[str] = Counter()
        self.transport: Counter[str] = Counter()
        self.latency = Histogram()
        self.opened = self.cut_off = self.open_now = self.open_max = 0
        self.held = Histogram()  # slowloris: seconds a socket was held before the server cut it
        self._captured: dict[str, object] = {}

    # -- running ----------------------------------------------------------------------------------

    async def run(self, t0_loop: float) -> None:
        loop = asyncio.get_running_loop()
        p = self.plan
        await asyncio.sleep(max(0.0, t0_loop + p.start_s - loop.time()))
        end = loop.time() + p.duration_s
        if p.kind == "replay":
            await self._capture()
        if p.kind == "slowloris":
            body = self._slowloris(end)
        else:
            workers = max(1, min(MAX_WORKERS, int(p.rate // 4) or 1, p.sources * 4))
            body = asyncio.gather(*(self._flood(k, workers, end) for k in range(workers)))
        try:
            async with asyncio.timeout(p.duration_s + 5.0):
                await body
        except TimeoutError:
            pass

    async def _flood(self, k: int, workers: int, end: float) -> None:
        loop = asyncio.get_running_loop()
        interval = workers / self.plan.rate
        conn = Connection(self.host, self.port, source=attack_source(k % self.plan.sources), connect_timeout_s=3.0)
        t = loop.time() + interval * k / workers
        try:
            while t < end:
                await asyncio.sleep(max(0.0, t - loop.time()))
                t = max(t + interval, loop.time() - interval)  # behind: skip rather than burst
                method, target, body = self._request()
                self.sent += 1
                started = loop.time()
                try:
                    resp = await conn.request(method, target, body, timeout_s=5.0, retry=False)
                except HttpError as e:
                    self.transport[e.kind] += 1
                    continue
                self.latency.add(loop.time() - started)
                self._count(resp)
        finally:
            conn.close()

    def _request(self) -> tuple[str, str, bytes | None]:
        p = self.plan
        if p.kind == "join-flood":
            return "POST", f"/api/spaces/{p.space}/join", b"{}"
        if p.kind == "bad-token":
            return "GET", f"/media/{p.space}/t/{self._bad_token()}/{self.rng.choice(('live.m3u8', '1.0.m4s', 'init.mp4'))}", None
        c = self._captured  # replay
        choice = self.rng.randrange(3)
        if choice == 0 and "solved" in c:
            return "POST", f"/api/spaces/{p.space}/join", orjson.dumps(c["solved"])
        if choice == 1 and "ticket" in c:
            return "POST", f"/api/spaces/{p.space}/join", orjson.dumps({"ticket": c["ticket"]})
        if "token" in c:
            other = p.space[:-1] + ("A" if p.space[-1] != "A" else "B")
            return "GET", f"/media/{other}/t/{c['token']}/live.m3u8", None
        return "POST", f"/api/spaces/{p.space}/join", orjson.dumps(c.get("solved", {}))

    def _bad_token(self) -> str:
        seat = secrets.token_urlsafe(9)
        mac = secrets.token_urlsafe(16)[:22]
        expires = int(time.time()) + (self.rng.choice((60, -120)))  # forged, or "expired" and forged
        return f"l{seat}.{expires}.{mac}"

    async def _capture(self) -> None:
        """One real join (solving the challenge if asked): the credentials to replay."""
        conn = Connection(self.host, self.port, source=attack_source(0))
        target = f"/api/spaces/{self.plan.space}/join"
        body: dict[str, object] = {}
        try:
            for _ in range(4):
                resp = await conn.request("POST", target, orjson.dumps(body), timeout_s=10.0)
                answer = orjson.loads(resp.body) if resp.body else {}
                if resp.status == 429 and answer.get("error") == "challenge_required":
                    ch = answer["challenge"]
                    body = {"challenge": ch["challenge"], "solution": solve(ch["challenge"], ch["bits"])}
                    self._captured["solved"] = body
                    continue
                if resp.status in (200, 202):
                    if "ticket" in answer:
                        self._captured["ticket"] = answer["ticket"]
                    if "token" in answer:
                        self._captured["token"] = answer["token"]
                    if "solved" not in self._captured:
                        self._captured["solved"] = {"challenge": "c1.0000000000000000.1.1.AAAAAAAAAAAAAAAAAAAAAA",
                                                    "solution": "0"}  # nothing was asked: a forged one
                    return
                break
        except HttpError as e:
            self.transport[e.kind] += 1
        finally:
            conn.close()

    async def _slowloris(self, end: float) -> None:
        loop = asyncio.get_running_loop()
        p = self.plan
        tasks: set[asyncio.Task[None]] = set()
        interval = 1.0 / p.rate
        t = loop.time()
        i = 0
        while t < end:
            await asyncio.sleep(max(0.0, t - loop.time()))
            t += interval
            if self.open_now >= p.max_connections:
                continue
            task = asyncio.create_task(self._slow_socket(attack_source(i % p.sources), end))
            i += 1
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(max(0.0, end - loop.time()))
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _slow_socket(self, source: str, end: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port, local_addr=(source, 0))
        except OSError as e:
            self.transport[type(e).__name__] += 1
            return
        self.opened += 1
        self.sent += 1
        self.open_now += 1
        self.open_max = max(self.open_max, self.open_now)
        opened = loop.time()
        try:
            writer.write(f"POST /api/spaces/{self.plan.space}/join HTTP/1.1\r\nHost: {self.host}\r\n".encode())
            n = 0
            while loop.time() < end:
                try:
                    async with asyncio.timeout(SLOW_LINE_S):
                        data = await reader.read(1024)
                    if not data:  # the server closed it
                        self.cut_off += 1
                        self.held.add(loop.time() - opened)
                        self.by_status["cut_off"] += 1
                        return
                    self.by_status["answered"] += 1  # it answered something: the head was judged bad
                    return
                except TimeoutError:
                    n += 1
                    writer.write(f"X-Slow-{n}: {n}\r\n".encode())
        except (ConnectionError, OSError):
            self.cut_off += 1
            self.held.add(loop.time() - opened)
            self.by_status["cut_off"] += 1
        finally:
            self.open_now -= 1
            writer.close()

    # -- counting ---------------------------------------------------------------------------------

    def _count(self, resp: Response) -> None:
        self.by_status[str(resp.status)] += 1
        if resp.status >= 400:
            try:
                code = orjson.loads(resp.body).get("error", "?")
            except (orjson.JSONDecodeError, AttributeError):
                code = "?"
            self.by_error[str(code)] += 1

    def report(self) -> dict[str, object]:
        answered = {k: v for k, v in self.by_status.items() if k.isdigit()}
        refused = sum(v for k, v in answered.items() if int(k) >= 400)
        accepted = sum(v for k, v in answered.items() if int(k) < 400)
        out: dict[str, object] = {
            **{k: v for k, v in asdict(self.plan).items() if k not in ("server", "seed")},
            "sent": self.sent, "refused": refused, "accepted": accepted,
            "by_status": dict(self.by_status), "by_error": dict(self.by_error),
            "transport_errors": dict(self.transport),
            "answer_p50_s": rounded(self.latency.quantile(0.5), 4),
            "answer_p99_s": rounded(self.latency.quantile(0.99), 4),
        }
        if self.plan.kind == "slowloris":
            out.update({"opened": self.opened, "cut_off": self.cut_off, "open_max": self.open_max,
                        "held_p50_s": rounded(self.held.quantile(0.5), 2),
                        "held_max_s": rounded(self.held.max if self.held.n else None, 2)})
        return out


def attack_main(pipe: Pipe, plan: AttackPlan) -> None:
    """Entry point of the attack process: ready, wait for T0, attack, report."""
    import uvloop

    from amphi.core.files import raise_open_files

    raise_open_files()
    attack = Attack(plan)
    pipe.send({"ready": True})

    async def main() -> None:
        t0_wall = pipe.recv()
        loop = asyncio.get_running_loop()
        await attack.run(loop.time() + (t0_wall - time.time()))

    try:
        uvloop.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        pipe.send({"attack": attack.report()})
        pipe.close()
