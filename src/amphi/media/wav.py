"""What a CLI speaker hears, to a WAV file (16-bit mono, 48 kHz): ``amphi speak --return-to``."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from amphi.core.config import SAMPLE_RATE


class WavWriter:
    def __init__(self, path: Path) -> None:
        self._wav = wave.open(str(path), "wb")
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(SAMPLE_RATE)

    def write(self, samples: np.ndarray, wall_time: float = 0.0) -> None:
        """Float samples in [-1, 1]; ``wall_time`` is accepted so this is a return hook."""
        self._wav.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())

    def close(self) -> None:
        self._wav.close()
