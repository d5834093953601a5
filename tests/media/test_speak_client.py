"""The ``amphi speak`` client's reading of a refusal (``media/ingest/client.py``): a 503's
Retry-After is a wait to honour (the Space changing host), anything else is not. The timings
themselves are judged against real nodes in tests/integration/test_forwarding.py."""

from __future__ import annotations

import httpx

from amphi.media.ingest.client import RETRY_AFTER_JITTER, RETURN_SILENCE_S, _retry_after


def answer(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers)


def test_a_503s_retry_after_is_the_wait_and_nothing_else_is() -> None:
    assert _retry_after(answer(503, **{"retry-after": "1"})) == 1.0
    assert _retry_after(answer(503, **{"retry-after": "2.5"})) == 2.5
    assert _retry_after(answer(503)) is None
    assert _retry_after(answer(503, **{"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"})) is None  # Amphi sends seconds
    assert _retry_after(answer(429, **{"retry-after": "5"})) is None  # a rate limit keeps its back-off
    assert _retry_after(answer(403, **{"retry-after": "1"})) is None


def test_a_dead_host_is_noticed_within_the_take_over_budget() -> None:
    # issue 19: both speakers heard again within 5 s of a kill -9; the lease lapses in 1.5 s and the
    # standby answers 503 Retry-After: 1 meanwhile: noticing, then one Retry-After, must fit well inside
    assert RETURN_SILENCE_S <= 1.0
    assert RETRY_AFTER_JITTER[0] >= 1.0 and RETRY_AFTER_JITTER[1] <= 1.2  # never early, a little spread
