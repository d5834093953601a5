"""Generated audio: the hold music played before a Space starts, and the demo speaker's
program. Pure functions of the sample index, so any stretch can be rendered on its own
and loops are seamless.
"""

from __future__ import annotations

import numpy as np

from amphi.core.config import SAMPLE_RATE

# Hold music: a slow C-major arpeggio (C5 E5 G5 E5), soft bell-like notes of 0.6 s.
HOLD_NOTES_HZ = (523.25, 659.25, 783.99, 659.25)
HOLD_NOTE_S = 0.6
HOLD_LEVEL = 0.18

# Demo speaker: a looping 8-note tune (A4 pentatonic), like someone humming on stage.
DEMO_NOTES_HZ = (440.0, 493.88, 554.37, 659.25, 739.99, 659.25, 554.37, 493.88)
DEMO_NOTE_S = 0.5
DEMO_LEVEL = 0.3


def _notes(start: int, n: int, notes: tuple[float, ...], note_s: float, level: float, decay_s: float) -> np.ndarray:
    idx = np.arange(start, start + n, dtype=np.int64)
    note_len = int(note_s * SAMPLE_RATE)
    which = (idx // note_len) % len(notes)
    t_in_note = (idx % note_len) / SAMPLE_RATE
    freq = np.asarray(notes)[which]
    # phase from the absolute sample index keeps every rendering of a stretch identical
    phase = 2 * np.pi * freq * (idx / SAMPLE_RATE)
    attack = np.minimum(t_in_note / 0.01, 1.0)
    envelope = attack * np.exp(-t_in_note / decay_s)
    tone = np.sin(phase) + 0.25 * np.sin(2 * phase)
    return (level * envelope * tone).astype(np.float32)


def hold_music(start: int, n: int) -> np.ndarray:
    return _notes(start, n, HOLD_NOTES_HZ, HOLD_NOTE_S, HOLD_LEVEL, decay_s=0.35)


def demo_program(start: int, n: int) -> np.ndarray:
    return _notes(start, n, DEMO_NOTES_HZ, DEMO_NOTE_S, DEMO_LEVEL, decay_s=0.6)
