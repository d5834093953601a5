"""CMAF / fragmented-MP4 boxes for one AAC-LC audio track, written and read by hand.

Pure functions, no I/O. An LL-HLS part is one ``moof`` + ``mdat`` fragment; a segment is
the concatenation of its parts; the init segment carries the codec configuration. The
download (.m4a) is an init with the total duration followed by every recorded segment.

Layout written (ISO/IEC 14496-12, CMAF):
    init:     ftyp, moov(mvhd, trak(tkhd, mdia(mdhd, hdlr, minf(smhd, dinf, stbl))), mvex([mehd,] trex))
    fragment: moof(mfhd, traf(tfhd, tfdt, trun)), mdat
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from amphi.core.config import AAC_FRAME, SAMPLE_RATE
from amphi.core.errors import BadRequest

TRACK_ID = 1
_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
_SAMPLE_RATE_INDEX = {96000: 0, 88200: 1, 64000: 2, 48000: 3, 44100: 4, 32000: 5, 24000: 6, 22050: 7, 16000: 8}


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I", 8 + len(body)) + kind + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


def audio_specific_config(sample_rate: int = SAMPLE_RATE, channels: int = 1) -> bytes:
    """AudioSpecificConfig for AAC-LC (object type 2)."""
    bits = (2 << 11) | (_SAMPLE_RATE_INDEX[sample_rate] << 7) | (channels << 3)
    return struct.pack(">H", bits)


def _descriptor(tag: int, body: bytes) -> bytes:
    if len(body) > 127:
        raise ValueError("descriptor too long")
    return bytes([tag, len(body)]) + body


def _esds(asc: bytes, bitrate: int) -> bytes:
    decoder_specific = _descriptor(0x05, asc)
    decoder_config = _descriptor(
        0x04,
        struct.pack(">BB", 0x40, (0x05 << 2) | 1) + (6144).to_bytes(3, "big")
        + struct.pack(">II", bitrate, bitrate) + decoder_specific,
    )
    sl_config = _descriptor(0x06, b"\x02")
    es = _descriptor(0x03, struct.pack(">HB", TRACK_ID, 0) + decoder_config + sl_config)
    return full_box(b"esds", 0, 0, es)


def init_segment(asc: bytes, *, bitrate: int, channels: int = 1, duration_samples: int = 0) -> bytes:
    """The init segment. ``duration_samples`` > 0 writes the total duration (for a finished
    recording) into mvhd/tkhd/mdhd and an ``mehd``, so players show the length of the file."""
    d = duration_samples
    mvhd = full_box(b"mvhd", 1, 0, struct.pack(">QQIQ", 0, 0, SAMPLE_RATE, d),
                    struct.pack(">IH10x", 0x10000, 0x100), _MATRIX, bytes(24), struct.pack(">I", TRACK_ID + 1))
    tkhd = full_box(b"tkhd", 1, 3, struct.pack(">QQI4xQ8x", 0, 0, TRACK_ID, d),
                    struct.pack(">hhhH", 0, 1, 0x100, 0), _MATRIX, struct.pack(">II", 0, 0))
    mdhd = full_box(b"mdhd", 1, 0, struct.pack(">QQIQ", 0, 0, SAMPLE_RATE, d), struct.pack(">HH", 0x55C4, 0))
    hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I4s12x", 0, b"soun"), b"Amphi audio\x00")
    mp4a = box(b"mp4a", bytes(6), struct.pack(">H8xHHHHI", 1, channels, 16, 0, 0, SAMPLE_RATE << 16),
               _esds(asc, bitrate))
    stbl = box(b"stbl",
               full_box(b"stsd", 0, 0, struct.pack(">I", 1), mp4a),
               full_box(b"stts", 0, 0, struct.pack(">I", 0)),
               full_box(b"stsc", 0, 0, struct.pack(">I", 0)),
               full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)),
               full_box(b"stco", 0, 0, struct.pack(">I", 0)))
    minf = box(b"minf",
               full_box(b"smhd", 0, 0, struct.pack(">hH", 0, 0)),
               box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1))),
               stbl)
    trak = box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, minf))
    mvex_children = [full_box(b"trex", 0, 0, struct.pack(">IIIII", TRACK_ID, 1, AAC_FRAME, 0, 0))]
    if d:
        mvex_children.insert(0, full_box(b"mehd", 1, 0, struct.pack(">Q", d)))
    ftyp = box(b"ftyp", b"iso6", struct.pack(">I", 0), b"iso6cmfcmp41")
    return ftyp + box(b"moov", mvhd, trak, box(b"mvex", *mvex_children))


def fragment(sequence: int, base_decode_time: int, samples: Sequence[bytes]) -> bytes:
    """One moof+mdat holding ``samples`` (AAC access units of AAC_FRAME samples each)."""
    tfhd = full_box(b"tfhd", 0, 0x020000 | 0x000008, struct.pack(">II", TRACK_ID, AAC_FRAME))
    tfdt = full_box(b"tfdt", 1, 0, struct.pack(">Q", base_decode_time))
    sizes = struct.pack(f">{len(samples)}I", *(len(s) for s in samples))

    def moof(data_offset: int) -> bytes:
        trun = full_box(b"trun", 0, 0x000001 | 0x000200, struct.pack(">Ii", len(samples), data_offset), sizes)
        return box(b"moof", full_box(b"mfhd", 0, 0, struct.pack(">I", sequence)), box(b"traf", tfhd, tfdt, trun))

    head = moof(0)
    head = moof(len(head) + 8)
    return head + box(b"mdat", *samples)


# -- reading -------------------------------------------------------------------------------


class MalformedMp4(BadRequest):
    code = "malformed_mp4"


def iter_boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """Yields (kind, payload_start, box_end) for each box in data[start:end]."""
    end = len(data) if end is None else end
    pos = start
    while pos < end:
        if end - pos < 8:
            raise MalformedMp4(f"truncated box header at {pos}")
        size, kind = struct.unpack_from(">I4s", data, pos)
        if size < 8 or pos + size > end:
            raise MalformedMp4(f"box {kind!r} at {pos} has bad size {size}")
        yield kind, pos + 8, pos + size
        pos += size


@dataclass(frozen=True)
class FragmentInfo:
    sequence: int
    base_decode_time: int  # in samples
    sample_count: int

    @property
    def end_decode_time(self) -> int:
        return self.base_decode_time + self.sample_count * AAC_FRAME


def read_fragments(data: bytes) -> list[FragmentInfo]:
    """Parses the moof boxes of a part or segment (our own layout: default sample duration)."""
    out: list[FragmentInfo] = []
    for kind, start, end in iter_boxes(data):
        if kind != b"moof":
            continue
        sequence = base = count = None
        for k, s, e in iter_boxes(data, start, end):
            if k == b"mfhd":
                (sequence,) = struct.unpack_from(">I", data, s + 4)
            elif k == b"traf":
                for k2, s2, _ in iter_boxes(data, s, e):
                    if k2 == b"tfdt":
                        version = data[s2]
                        base = struct.unpack_from(">Q" if version else ">I", data, s2 + 4)[0]
                    elif k2 == b"trun":
                        (count,) = struct.unpack_from(">I", data, s2 + 4)
        if sequence is None or base is None or count is None:
            raise MalformedMp4("moof without mfhd, tfdt or trun")
        out.append(FragmentInfo(sequence, base, count))
    return out


def split_fragments(data: bytes) -> list[tuple[FragmentInfo, int, int]]:
    """A segment's fragments (its LL-HLS parts) with where each begins and ends in ``data``:
    a ``moof`` and the boxes up to the next one (its ``mdat``). How a copy of a segment made
    elsewhere gets its parts back."""
    starts = [start - 8 for kind, start, _ in iter_boxes(data) if kind == b"moof"]
    infos = read_fragments(data)
    if not starts or starts[0] != 0:
        raise MalformedMp4("a segment begins with a moof")
    return [(info, a, b) for info, a, b in zip(infos, starts, [*starts[1:], len(data)])]


def read_audio_specific_config(init: bytes) -> bytes:
    """The AudioSpecificConfig in an init segment's ``esds`` (its DecoderSpecificInfo, tag 5)."""
    at = init.find(b"esds")
    if at < 0:
        raise MalformedMp4("no esds box in the init segment")
    # our layout (_esds): version/flags (4), ES_Descriptor (tag, length, ES_ID, flags: 5),
    # DecoderConfigDescriptor (tag, length: 2) and its 13 fixed bytes, then tag 5
    tag = at + 4 + 4 + 5 + 2 + 13
    if tag + 2 > len(init) or init[tag] != 0x05 or tag + 2 + init[tag + 1] > len(init):
        raise MalformedMp4("no DecoderSpecificInfo in the esds box")
    return init[tag + 2:tag + 2 + init[tag + 1]]
