import pytest

from amphi.core.config import AAC_FRAME
from amphi.media import fmp4
from amphi.media.encoder import AacEncoder
from tests.audio import decode, dominant_hz, tone


def encode(seconds: float, hz: float) -> tuple[AacEncoder, list[bytes]]:
    enc = AacEncoder(64_000)
    units = enc.encode(tone(hz, seconds)) + enc.flush()
    return enc, units


def test_fragments_decode_to_the_tone_with_every_sample() -> None:
    enc, units = encode(2.0, 440)
    body = b"".join(fmp4.fragment(i + 1, i * 10 * AAC_FRAME, units[i * 10 : (i + 1) * 10]) for i in range(len(units) // 10))
    kept = (len(units) // 10) * 10
    audio = decode(enc.init_segment() + body)
    assert len(audio) == kept * AAC_FRAME
    assert dominant_hz(audio[4800:-4800]) == pytest.approx(440, abs=3)


def test_read_fragments_gives_back_sequence_and_decode_times() -> None:
    _, units = encode(1.0, 440)
    data = fmp4.fragment(7, 12_288, units[:5]) + fmp4.fragment(8, 12_288 + 5 * AAC_FRAME, units[5:9])
    infos = fmp4.read_fragments(data)
    assert [(i.sequence, i.base_decode_time, i.sample_count) for i in infos] == [(7, 12_288, 5), (8, 17_408, 4)]
    assert infos[0].end_decode_time == infos[1].base_decode_time


def test_download_init_carries_the_duration() -> None:
    enc, units = encode(1.0, 440)
    init = fmp4.init_segment(enc.audio_specific_config, bitrate=64_000, duration_samples=len(units) * AAC_FRAME)
    import av, io

    with av.open(io.BytesIO(init + fmp4.fragment(1, 0, units))) as c:
        assert c.duration / 1e6 == pytest.approx(len(units) * AAC_FRAME / 48_000, abs=0.01)


def test_truncated_boxes_are_reported() -> None:
    _, units = encode(0.2, 440)
    data = fmp4.fragment(1, 0, units)
    with pytest.raises(fmp4.MalformedMp4):
        fmp4.read_fragments(data[:-5])


def test_audio_specific_config_matches_the_encoder() -> None:
    enc = AacEncoder(64_000)
    assert enc.audio_specific_config == fmp4.audio_specific_config() == bytes([0x11, 0x88])
