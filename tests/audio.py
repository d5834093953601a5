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
