"""Audio checks used by the tests: decode real files and look at the sound."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import av
import numpy as np

SR = 48_000


def decode(source: bytes | str | Path) -> np.ndarray:
    """Decodes any audio PyAV reads (bytes of an MP4, a path or a URL) to float32 mono 48 kHz."""
    container = av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source))
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SR)
    out = []
    with container:
        for frame in container.decode(audio=0):
            for f in resampler.resample(frame):
                out.append(f.to_ndarray().reshape(-1))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def ffmpeg_decode(source: str | Path, *, seconds: float | None = None, timeout: float = 60,
                  live_edge: bool = False) -> np.ndarray:
    """Decodes with the ffmpeg command line, an independent client. ``live_edge``: a live
    playlist is read from its last segment (at most one segment behind live), not ffmpeg's
    default of three segments back."""
    cmd = ["ffmpeg", "-v", "error", *(["-live_start_index", "-1"] if live_edge else []), "-i", str(source)]
    if seconds is not None:
        cmd += ["-t", str(seconds)]
    cmd += ["-ac", "1", "-ar", str(SR), "-f", "f32le", "-"]
    out = subprocess.run(cmd, capture_output=True, timeout=timeout, check=True).stdout
    return np.frombuffer(out, dtype=np.float32)


def dominant_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * SR / len(x))


def dominant_per_window(x: np.ndarray, window_s: float = 0.25) -> list[float]:
    n = int(window_s * SR)
    return [dominant_hz(x[i : i + n]) for i in range(0, len(x) - n + 1, n)]


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def tone(hz: float, seconds: float, level: float = 0.5, start: int = 0) -> np.ndarray:
    t = (np.arange(int(seconds * SR)) + start) / SR
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)


SENTENCES = (
    "Welcome to the Space. Tonight we talk about live audio at scale, what broke at the scheduled "
    "minute, and how a program can guard its own sound.",
    "Thanks for having me. The first thing I learned is that nobody reads the logs during a launch; "
    "they listen, and silence is the loudest failure there is.",
)


def speech(path: Path, *, text: int = 0, voice: str = "en", dbfs: float = -20.0, repeat: int = 1,
           peak: bool = False) -> np.ndarray:
    """Real speech (espeak-ng, installed by ``make setup``), 48 kHz mono, scaled so that its
    voiced parts (samples above -60 dBFS) have an RMS of ``dbfs`` (``peak``: so that its
    highest sample is at ``dbfs``); also written to ``path`` as a WAV file that ``amphi
    speak --file`` plays."""
    raw = path.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "-w", str(raw), SENTENCES[text]], check=True,
                   capture_output=True, timeout=60)
    x = ffmpeg_decode(raw)
    x = np.tile(np.concatenate([x, np.zeros(SR // 2, np.float32)]), repeat)
    level = float(np.abs(x).max()) if peak else rms(x[np.abs(x) > 1e-3])
    x = (x * (10 ** (dbfs / 20) / level)).astype(np.float32)
    write_wav(path, x)
    return x


def write_wav(path: Path, x: np.ndarray) -> None:
    import wave

    pcm = np.rint(np.clip(x, -1, 1) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.tobytes())


def ebur128(x: np.ndarray) -> tuple[float, float]:
    """ffmpeg's EBU R128 meter on float32 mono 48 kHz audio: (integrated loudness in LUFS,
    true peak in dBTP)."""
    import re

    out = subprocess.run(["ffmpeg", "-hide_banner", "-nostats", "-f", "f32le", "-ar", str(SR), "-ac", "1", "-i", "-",
                          "-af", "ebur128=peak=true", "-f", "null", "-"], input=x.astype(np.float32).tobytes(),
                         capture_output=True, timeout=60, check=True).stderr.decode()
    summary = out[out.rindex("Summary:"):]
    integrated = float(re.search(r"I:\s+(-?[\d.]+|-inf) LUFS", summary).group(1))
    peak = float(re.search(r"Peak:\s+(-?[\d.]+|-inf) dBFS", summary).group(1))
    return integrated, peak
