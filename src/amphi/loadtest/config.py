"""What a load-test run is told: the server, the protocol, the player and how long. Shared by
the swarm (which runs listeners), the listeners themselves and the run's parent process."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoadConfig:
    server: str  # base URL (amphi), playlist URL (hls) or mount URL (icecast)
    space: str = ""  # amphi only
    protocol: str = "amphi"  # amphi | hls | icecast
    player: str = "ll"  # ll (parts, blocking reload) | segments | stream (one streamed GET per segment)
    duration_s: float = 30.0  # from T0 to the end of the run
    request_timeout_s: float = 10.0
    stream_kbps: float = 64.0  # icecast: the mount's bitrate
    stream_start_s: float = 0.5  # icecast: buffered seconds before playback starts
    seed: int = 1
    admission: str = "line"  # line: wait by the line document, renewed by playlist reloads; polls: the first
    # wave's clients (ticket polls, API renewals at POLLS_RENEW_SHARE of a token's life), to compare the two
    spread_sources: bool = True  # each listener connects from its own 127.x.y.z (on a loopback server)
    ca_file: str | None = None  # https servers are trusted if this CA (PEM) signed them; default: the system's store
