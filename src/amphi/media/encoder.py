"""AAC-LC encoder (PyAV): float32 mono program frames in, AAC access units out.

CPU work without I/O; the pipeline runs it off the event loop. The encoder delays audio
by ``DELAY`` samples (AAC priming): input sample ``s`` decodes at time ``s + DELAY``.
"""

from __future__ import annotations

import av
import numpy as np

from amphi.core.config import AAC_FRAME, SAMPLE_RATE
from amphi.media import fmp4

DELAY = AAC_FRAME  # samples; ffmpeg's native AAC encoder primes with one frame


class AacEncoder:
    def __init__(self, bitrate: int) -> None:
        self._ctx = av.CodecContext.create("aac", "w")
        self._ctx.sample_rate = SAMPLE_RATE
        self._ctx.layout = "mono"
        self._ctx.format = "fltp"
        self._ctx.bit_rate = bitrate
        self._ctx.open()
        self.bitrate = bitrate
        self._pending = np.zeros(0, dtype=np.float32)
        self._pts = 0
        self.closed = False

    @property
    def audio_specific_config(self) -> bytes:
        extradata = self._ctx.extradata
        return bytes(extradata[:2]) if extradata else fmp4.audio_specific_config()

    def init_segment(self, duration_samples: int = 0) -> bytes:
        return fmp4.init_segment(self.audio_specific_config, bitrate=self.bitrate, duration_samples=duration_samples)

    def encode(self, samples: np.ndarray) -> list[bytes]:
        """Feeds any number of samples; returns the access units that are complete."""
        self._pending = np.concatenate((self._pending, samples.astype(np.float32, copy=False)))
        out: list[bytes] = []
        while len(self._pending) >= AAC_FRAME:
            chunk, self._pending = self._pending[:AAC_FRAME], self._pending[AAC_FRAME:]
            out.extend(self._encode_frame(chunk))
        return out

    def flush(self) -> list[bytes]:
        """Pads the last partial frame with silence and drains the encoder. Final."""
        out: list[bytes] = []
        if len(self._pending):
            pad = np.zeros(AAC_FRAME - len(self._pending), dtype=np.float32)
            out.extend(self._encode_frame(np.concatenate((self._pending, pad))))
            self._pending = np.zeros(0, dtype=np.float32)
        out.extend(bytes(p) for p in self._ctx.encode(None))
        self.closed = True
        return out

    def _encode_frame(self, chunk: np.ndarray) -> list[bytes]:
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk[None, :]), format="fltp", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        self._pts += AAC_FRAME
        return [bytes(p) for p in self._ctx.encode(frame)]
