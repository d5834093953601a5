"""What the room says about its sound (docs/sound.md). Pure: no I/O, the time is passed in.

``DeadAir`` watches a live Space: when nothing on stage is audible for ``after_s`` (a Space's
``dead_air_s``, default 8 s) it raises an alert that says why, and clears it as soon as
someone is heard. ``problems`` is the host console's check per person on stage before the
start (and during): connected, heard, not feeding back.
"""

from __future__ import annotations

from dataclasses import dataclass

from amphi.control.stage import Participant

MESSAGES = {
    "nobody_connected": "Dead air: nobody on stage is connected. Connect your microphone (Speak) or invite a speaker.",
    "all_muted": "Dead air: everyone on stage is muted. Unmute yourself or a speaker.",
    "silent": "Dead air: the speakers are connected and unmuted, but nobody is heard. Check the microphones.",
}


@dataclass(frozen=True, slots=True)
class DeadAirAlert:
    reason: str  # a key of MESSAGES
    since: float  # when the program went silent (epoch seconds)
    after_s: float
    message: str
    talking_muted: tuple[str, ...] = ()  # names of muted people whose microphones are talking

    def to_json(self) -> dict[str, object]:
        return {"reason": self.reason, "since": round(self.since, 3), "after_s": self.after_s,
                "message": self.message, "talking_muted": list(self.talking_muted)}


def reason(on_stage: list[Participant]) -> str:
    connected = [p for p in on_stage if p.connected]
    if not connected:
        return "nobody_connected"
    if all(p.muted for p in connected):
        return "all_muted"
    return "silent"


class DeadAir:
    """One Space's dead-air watch. ``update`` is called a few times a second."""

    def __init__(self) -> None:
        self.alert: DeadAirAlert | None = None
        self._quiet_since: float | None = None

    def update(self, now: float, live: bool, after_s: float, on_stage: list[Participant]) -> bool:
        """True when the alert began, changed or cleared."""
        if not live or any(p.audible and p.talking for p in on_stage):
            self._quiet_since = None
            return self._set(None)
        if self._quiet_since is None:
            self._quiet_since = now
        if now - self._quiet_since < after_s:
            return self._set(None)
        why = reason(on_stage)
        message = MESSAGES[why]
        talking_muted = tuple(p.name for p in on_stage if p.muted_talking)
        if talking_muted:
            message += f" ({', '.join(talking_muted)} {'is' if len(talking_muted) == 1 else 'are'} talking while muted.)"
        return self._set(DeadAirAlert(why, self._quiet_since, after_s, message, talking_muted))

    def _set(self, alert: DeadAirAlert | None) -> bool:
        if alert == self.alert:
            return False
        self.alert = alert
        return True


def problems(p: Participant) -> list[str]:
    """What keeps a person on stage from being ready to go live (empty: ready)."""
    out = []
    if not p.connected:
        out.append("not connected")
    elif not p.heard:
        out.append("not heard yet")
    if p.feedback:
        out.append("feedback: use headphones")
    return out
