"""The node's health loop: once a period, measure the event loop (its worst lag, its CPU)
and the join answers, let the governor move the seat limit and the degradation ladder
(``Listeners.health``), and tell obs what moved and why."""

from __future__ import annotations

import asyncio
import time

from amphi.control.health import HealthSample
from amphi.control.listeners import Listeners
from amphi.obs.observer import Observer

LAG_PROBE_S = 0.05  # the event-loop lag probe's period


class Health:
    def __init__(self, listeners: Listeners, obs: Observer, period_s: float) -> None:
        self._listeners = listeners
        self._obs = obs
        self._period_s = period_s
        self._loop_lag = 0.0  # worst in the current period

    async def probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            self._loop_lag = max(self._loop_lag, loop.time() - t - LAG_PROBE_S)

    async def run(self) -> None:
        listeners = self._listeners
        gov = listeners.governor
        cpu0, t0 = time.thread_time(), time.monotonic()  # this runs on the loop's thread
        while True:
            await asyncio.sleep(self._period_s)
            cpu1, t1 = time.thread_time(), time.monotonic()
            sample = HealthSample.measure(self._loop_lag, (cpu1 - cpu0) / (t1 - t0), listeners.join_times)
            cpu0, t0 = cpu1, t1
            self._loop_lag = 0.0
            level, limit = gov.level, gov.limit
            listeners.health(sample)
            self._obs.health(sample, gov, limit, level)  # obs: limit and ladder changes, with their reason
