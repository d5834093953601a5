"""The stream player's pure parts: fragments read out of a segment's bytes however they are cut,
the parts a joining listener plays and their program date-times, and the playlists it reads
(byte-range parts, the preload hint's offset, the multivariant playlist of the join)."""

from __future__ import annotations

import random
import struct
import time
from types import SimpleNamespace

import pytest

from amphi.loadtest import playlist as m3u8
from amphi.loadtest.buffer import Playback, PlaybackBuffer
from amphi.loadtest.config import LoadConfig
from amphi.loadtest.fragments import FragmentReader, SegmentRead, init_timescale, start_skip
from amphi.loadtest.http import Tls
from amphi.loadtest.listener import Listener
from amphi.loadtest.stats import Histogram
from amphi.media import fmp4

PART_SAMPLES = 24 * 1024  # a 0.512 s part: 24 AAC frames at 48 kHz


def segment(first: int, parts: int, frame_bytes: int = 180) -> bytes:
    """``parts`` fragments as Amphi's packager writes them, the first at part number ``first``."""
    return b"".join(fmp4.fragment(k, k * PART_SAMPLES, [bytes([k % 256]) * frame_bytes] * 24)
                    for k in range(first, first + parts))


def feed_in_pieces(reader: FragmentReader | SegmentRead, data: bytes, step: int) -> list:
    out = []
    for i in range(0, len(data), step):
        out += reader.feed(data[i:i + step])
    return out


@pytest.mark.parametrize("step", [1, 7, 500, 1 << 20])
def test_fragments_come_out_whole_however_the_bytes_are_cut(step: int) -> None:
    data = segment(40, 7)
    r = FragmentReader()
    got = feed_in_pieces(r, data, step)
    assert [f.decode_time for f in got] == [k * PART_SAMPLES for k in range(40, 47)]
    assert all(f.samples == 24 and f.duration_s == pytest.approx(0.512) for f in got)
    assert sum(f.size for f in got) == len(data) == r.bytes and r.idle
    assert [data[f.end - f.size:f.end] for f in got] == [segment(k, 1) for k in range(40, 47)]  # each one's bytes


def test_a_fragment_counts_only_once_its_last_byte_is_in() -> None:
    data = segment(0, 2)
    first = len(fmp4.fragment(0, 0, [b"\0" * 180] * 24))
    r = FragmentReader()
    assert r.feed(data[:first - 1]) == [] and not r.idle  # all but the mdat's last byte: not playable yet
    assert len(r.feed(data[first - 1:first])) == 1 and r.idle
    assert r.feed(data[first:first + 8]) == []


def test_other_boxes_are_skipped_and_per_sample_durations_summed() -> None:
    styp = fmp4.box(b"styp", b"msdh", b"\0\0\0\0", b"msdhmsix")
    # a moof whose trun gives each sample's duration and size (flags 0x100 | 0x200), 10 samples of 960
    trun = fmp4.full_box(b"trun", 0, 0x000001 | 0x000100 | 0x000200, struct.pack(">Ii", 10, 0),
                         b"".join(struct.pack(">II", 960, 4) for _ in range(10)))
    tfhd = fmp4.full_box(b"tfhd", 0, 0x020000, struct.pack(">I", 1))
    tfdt = fmp4.full_box(b"tfdt", 0, 0, struct.pack(">I", 4800))
    moof = fmp4.box(b"moof", fmp4.full_box(b"mfhd", 0, 0, struct.pack(">I", 1)), fmp4.box(b"traf", tfhd, tfdt, trun))
    stray = fmp4.box(b"mdat", b"no moof before me")
    got = FragmentReader(timescale=48_000).feed(styp + stray + moof + fmp4.box(b"mdat", b"\0" * 40))
    assert len(got) == 1
    assert (got[0].samples, got[0].decode_time, got[0].duration_s) == (10, 4800, pytest.approx(0.2))


@pytest.mark.parametrize("bad", [b"\0\0\0\x04moof", b"\0\0\0\x01mdat" + bytes(8),
                                 fmp4.box(b"moof", fmp4.full_box(b"mfhd", 0, 0, b"\0\0\0\1"))])
def test_boxes_that_cannot_be_walked_are_refused(bad: bytes) -> None:
    with pytest.raises(fmp4.MalformedMp4):
        FragmentReader().feed(bad)


def test_the_timescale_comes_from_the_init_segment() -> None:
    assert init_timescale(fmp4.init_segment(fmp4.audio_specific_config(), bitrate=64_000)) == 48_000
    assert init_timescale(b"not an mp4 at all") == 48_000  # unreadable: the default


def test_a_listener_joining_mid_segment_starts_at_its_newest_parts() -> None:
    """The origin sends the five parts made so far at once: the listener keeps the newest two
    (one to play, one in hand), each dated from the segment's date-time and its decode time."""
    assert [start_skip(n, 2) for n in (0, 1, 2, 5, 7)] == [0, 0, 0, 3, 5]
    pdt = 1_700_000_000.0
    read = SegmentRead(12, pdt, skip=start_skip(5, 2))
    heard = read.feed(segment(84, 5))
    assert [h.pdt - pdt for h in heard] == pytest.approx([3 * 0.512, 4 * 0.512])
    heard = read.feed(segment(89, 2))  # the last two parts, as they are made
    assert [h.pdt - pdt for h in heard] == pytest.approx([5 * 0.512, 6 * 0.512])
    assert read.parts == 7 and read.end_pdt == pytest.approx(pdt + 7 * 0.512)
    assert SegmentRead(13, None).feed(segment(91, 1))[0].pdt is None  # no date-time: no latency


def test_streamed_parts_in_the_buffer_model_start_near_live_and_never_stall_when_on_time() -> None:
    """Latency from the parts' date-times: a listener that joins as part 5 of a segment is made
    hears 1.024 s plus delivery behind live, and parts streamed as they are made keep it playing."""
    pdt, delay = 1_000.0, 0.05  # segment 0's first sample; each part arrives 50 ms after its end
    b = PlaybackBuffer(start_s=2 * 0.512 - 1e-3)
    read = SegmentRead(0, pdt, skip=start_skip(5, 2))
    now = pdt + 5 * 0.512 + delay
    for h in read.feed(segment(0, 5)):
        b.add(h.duration_s, now, h.pdt)
    assert b.state is Playback.PLAYING and b.latency(now) == pytest.approx(2 * 0.512 + delay)
    for k in range(5, 40):  # this segment's last parts, then five more segments, streamed
        if k % 7 == 0:
            read = SegmentRead(k // 7, read.end_pdt)
        now = pdt + (k + 1) * 0.512 + delay
        for h in read.feed(segment(k, 1)):
            b.add(h.duration_s, now, h.pdt)
        assert b.latency(now) == pytest.approx(2 * 0.512 + delay)
    assert b.stalls == 0


CONTRACT_PLAYLIST = """#EXTM3U
#EXT-X-VERSION:9
#EXT-X-TARGETDURATION:4
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.536
#EXT-X-PART-INF:PART-TARGET=0.512
#EXT-X-MEDIA-SEQUENCE:11
#EXT-X-MAP:URI="init.mp4"
#EXT-X-PROGRAM-DATE-TIME:2024-05-01T10:00:00.000Z
#EXT-X-PART:DURATION=0.512,URI="11.m4s",BYTERANGE="1234@0",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.512,URI="11.m4s",BYTERANGE="1230@1234",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.512,URI="11.m4s",BYTERANGE="1240",INDEPENDENT=YES
#EXTINF:1.536,
11.m4s
#EXT-X-PROGRAM-DATE-TIME:2024-05-01T10:00:01.536Z
#EXT-X-PART:DURATION=0.512,URI="12.m4s",BYTERANGE="1234@0",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.512,URI="12.m4s",BYTERANGE="1230@1234",INDEPENDENT=YES
#EXT-X-PRELOAD-HINT:TYPE=PART,URI="12.m4s",BYTERANGE-START=2464
"""


def test_byte_range_parts_and_the_hints_offset() -> None:
    pl = m3u8.parse(CONTRACT_PLAYLIST)
    closed, open_ = pl.segments
    assert (closed.msn, closed.uri, open_.msn, open_.uri) == (11, "11.m4s", 12, None)
    assert [p.byterange for p in closed.parts] == [(1234, 0), (1230, 1234), (1240, 2464)]  # no offset: follows on
    assert [(p.index, p.uri) for p in open_.parts] == [(0, "12.m4s"), (1, "12.m4s")]
    assert open_.pdt - closed.pdt == pytest.approx(1.536)
    assert (pl.preload_hint, pl.preload_hint_start) == ("12.m4s", 2464)
    assert m3u8.parse(CONTRACT_PLAYLIST.replace(",BYTERANGE-START=2464", "")).preload_hint_start is None


def test_the_multivariant_playlist_of_the_join() -> None:
    body = (b"#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-INDEPENDENT-SEGMENTS\n"
            b'#EXT-X-STREAM-INF:BANDWIDTH=80000,AVERAGE-BANDWIDTH=70000,CODECS="mp4a.40.2"\nlive.m3u8\n')
    assert m3u8.is_multivariant(body) and not m3u8.is_multivariant(CONTRACT_PLAYLIST.encode())
    (v,) = m3u8.parse_multivariant(body.decode())
    assert (v.uri, v.bandwidth, v.average_bandwidth, v.codecs) == ("live.m3u8", 80_000, 70_000, "mp4a.40.2")
    with pytest.raises(ValueError):
        m3u8.parse_multivariant("#EXTM3U\n#EXT-X-STREAM-INF:CODECS=\"mp4a.40.2\"\nlive.m3u8\n")  # no BANDWIDTH
    with pytest.raises(ValueError):
        m3u8.parse_multivariant("#EXTM3U\n")


def test_audio_read_after_the_sessions_end_is_not_judged() -> None:
    """When a whole crowd's sessions end at once, the generator's loop comes round to each late;
    a part read then (its buffer run dry in that delay) is no listener's stall."""
    swarm = SimpleNamespace(cfg=LoadConfig(server="http://127.0.0.1:9", spread_sources=False), tls=Tls(None),
                            latency=Histogram(), first_audio=lambda s: None)
    listener = Listener(swarm, None, random.Random(1))  # type: ignore[arg-type]
    listener.buffer = PlaybackBuffer(start_s=1.0)
    now = time.time()
    listener.ends_at = now + 3600
    listener._got_audio(1.024, None)  # two parts: playing, a second in hand
    assert listener.buffer.state is Playback.PLAYING
    listener.buffer._last -= 5.0  # its last read was 5 s ago: the loop comes round to it late ...
    listener.ends_at = time.time() - 0.001  # ... after its session ended
    listener._got_audio(0.512, None)
    assert listener.buffer.state is Playback.PLAYING and listener.buffer.stalls == 0
    assert listener.buffer.media_s == pytest.approx(1.024)  # the late part is not counted either
