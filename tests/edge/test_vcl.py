"""The VCL's rules for streamed segments, checked on the rendered text (pure: no Varnish; the
real edge runs them in test_streaming)."""

from __future__ import annotations

import asyncio
import re

from amphi.edge.varnish import pool_max
from amphi.edge.vcl import SEGMENT, WHOLE_RANGE, Backend, EdgeSpec, render
from amphi.web.asgi import preflight
from amphi.web.routes import ROUTES


def test_a_range_from_byte_0_to_the_end_is_the_streamed_segment_and_any_other_its_own_object() -> None:
    whole = re.compile(WHOLE_RANGE)
    assert whole.match("bytes=0-") and whole.match("bytes=0-9007199254740991")  # Shaka Player
    for part in ("bytes=0-1233", "bytes=1234-2463", "bytes=1234-", "bytes=-500", "bytes=0-1,5-9"):
        assert not whole.match(part), part
    segment = re.compile(SEGMENT)
    assert segment.match("/o/n1/media/sp/t/tok.en/12.m4s")
    assert not segment.match("/o/n1/media/sp/t/tok.en/12.3.m4s") and not segment.match("/o/n1/media/sp/t/x/init.mp4")
    vcl = render(EdgeSpec.signed("e1", "s" * 32, (Backend.parse("n1", "http://127.0.0.1:1"),)))
    assert f'req.http.range !~ "{WHOLE_RANGE}"' in vcl and "hash_data(req.http.x-range)" in vcl
    assert "set bereq.http.range = bereq.http.x-range" in vcl


def test_the_thread_pools_hold_a_thread_per_stream() -> None:
    assert 2 * pool_max(10_000) >= 10_000 + 200 and 2 * pool_max(101) >= 101 + 200


def test_media_preflights_are_answered_at_the_edge_as_the_origin_answers_them() -> None:
    vcl = render(EdgeSpec.signed("e1", "s" * 32, (Backend.parse("n1", "http://127.0.0.1:1"),)))
    media = vcl[vcl.index("sub amphi_media"):]
    assert media.index('req.method == "OPTIONS"') < media.index('req.method != "GET"')  # not a 405
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(preflight(send, ROUTES["media.segment"].methods))
    assert sent[0]["status"] == 204
    for name, value in sent[0]["headers"]:
        if name.startswith(b"access-control-"):  # the origin's, each set by the VCL the same
            assert f'resp.http.{name.decode()} = "{value.decode()}";' in vcl, name
