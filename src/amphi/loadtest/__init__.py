"""``amphi loadtest``: real HTTP listeners that behave like players (join, wait in line,
LL-HLS with blocking reload, token renewal, a playback buffer model), in several processes,
with a report of what each experienced. See docs/loadtest.md.

Modules: ``playlist`` (parse), ``buffer`` (playback model), ``profiles`` (arrival
schedules), ``stats`` (histograms) are pure; ``http`` (raw asyncio client), ``listener``
(one player), ``swarm`` (one process), ``run`` (the parent), ``report`` and ``cli``.
"""
