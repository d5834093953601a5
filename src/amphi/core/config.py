"""One config object for a node. Each component's settings live in their own frozen
dataclass, with units in the field names or comments; ``Config`` gathers them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_RATE = 48_000  # Hz; the program clock and every track run at this rate
AAC_FRAME = 1024  # samples per AAC-LC access unit


@dataclass(frozen=True)
class SoundConfig:
    """The program guards its own sound (docs/sound.md; ``amphi.media.guard``): each
    speaker's loudness, the program's true peak, feedback, dead air."""

    enabled: bool = True
    target_lufs: float = -18.0  # each speaker's speech, and so the program (AES TD1004: -16 to -20; docs/sound.md)
    window_lu: float = 6.0  # a speaker up to this much louder than the target is left as is
    max_boost_db: float = 36.0  # lifts speech from about -54 LUFS
    max_cut_db: float = 20.0
    speech_gate_lufs: float = -60.0  # a 400 ms block quieter than this is not speech: it never moves the gain
    estimate_s: float = 10.0  # the speech loudness estimate covers this much of the speaker's recent speech
    slew_db_per_s: float = 15.0  # the gain moves at most this fast
    expander_below_lu: float = 20.0  # a tick this far below the speaker's speech is a pause ...
    expander_hold_s: float = 0.6  # ... and after this long of pause the boost is released ...
    expander_release_db_per_s: float = 20.0  # ... at this rate
    ceiling_dbtp: float = -3.0  # the program's true peak before the encoder: under -1 dBTP after it (docs/sound.md)
    limiter_release_db_per_s: float = 30.0
    feedback: bool = True  # detect acoustic loops and duck the speaker
    dead_air_s: float = 8.0  # a live Space with nothing audible this long alerts its hosts (per Space)


@dataclass(frozen=True)
class MediaConfig:
    """Timing of the program. Latency levels are data, not code: change the numbers here."""

    tick_ms: int = 20  # mixer tick; one program frame per tick
    bitrate: int = 64_000  # AAC-LC bits per second
    part_packets: int = 24  # AAC frames per LL-HLS part: 24 * 1024 / 48k = 0.512 s
    parts_per_segment: int = 12  # parts per segment: 6.144 s (target duration 7); docs/streaming.md on why
    window_segments: int = 8  # complete segments listed in the live playlist
    part_segments: int = 2  # complete segments that still list their parts
    jitter_target_ms: int = 60  # per-track playout delay once a track (re)starts
    jitter_max_ms: int = 240  # per-track buffer bound; the oldest audio is dropped beyond it
    stall_cover_ms: int = 1000  # after a mixer stall this long, the overdue ticks still get the speakers' audio
    program_queue_ticks: int = 50  # mixer -> encoder channel bound (1 s); drops oldest when full
    blocking_timeout_s: float = 6.0  # a blocking playlist reload answers 503 after this (or after 1.5 segments)
    max_blocking_waiters: int = 50_000  # concurrent blocking reloads per node; more get 503
    sound: SoundConfig = SoundConfig()  # the guard: loudness, true peak, feedback, dead air

    @property
    def tick_samples(self) -> int:
        return SAMPLE_RATE * self.tick_ms // 1000

    @property
    def part_samples(self) -> int:
        return self.part_packets * AAC_FRAME

    @property
    def part_s(self) -> float:
        return self.part_samples / SAMPLE_RATE

    @property
    def segment_samples(self) -> int:
        return self.part_samples * self.parts_per_segment

    @property
    def segment_s(self) -> float:
        return self.segment_samples / SAMPLE_RATE

    @property
    def hold_s(self) -> float:
        """The longest a request waits for media that will come: a blocking reload, the next
        part or segment, a growing segment's next bytes."""
        return max(self.blocking_timeout_s, 1.5 * self.segment_s)

    @property
    def target_duration_s(self) -> int:
        return max(1, round(self.segment_samples / SAMPLE_RATE + 0.4999))

    @property
    def switch_align_samples(self) -> int:
        """Program mode changes (hold -> live -> ended) land on a sample that is a whole
        number of mixer ticks and of AAC frames, so segments can be cut exactly there."""
        a, b = self.tick_samples, AAC_FRAME
        while b:
            a, b = b, a % b
        return self.tick_samples * AAC_FRAME // a


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = None  # base URL handed to clients; default http://host:port
    tls_cert: Path | None = None  # PEM certificate chain: serve https (browsers grant the microphone only to
    tls_key: Path | None = None  # secure origins: https, or localhost); both or neither
    max_body_bytes: int = 64 * 1024  # JSON and SDP bodies above this get 413
    header_read_timeout_s: float = 10.0  # a connection that has not sent a whole request head in this long is
    # closed (slowloris); granian applies it to idle keep-alive connections as well (docs/defense.md)

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls_cert else "http"
        return (self.public_url or f"{scheme}://{self.host}:{self.port}").rstrip("/")


@dataclass(frozen=True)
class AdmissionConfig:
    """Who gets a seat, how fast, and what the node does under pressure (see
    docs/admission.md). Seats are node-wide; lines are per Space."""

    max_listeners: int = 10_000  # seat ceiling of the node; the adaptive limit stays below it
    min_listeners: int = 10  # the adaptive limit never goes below this
    admit_rate_per_s: float = 500.0  # GCRA: new listeners seated per second, node-wide
    admit_burst: int = 100  # GCRA: seats that may be given at once after a quiet spell
    token_ttl_s: float = 60.0  # admission token lifetime; clients renew at half of it
    seat_grace_s: float = 15.0  # a seat outlives its last token by this much
    ticket_hold_s: float = 30.0  # a seat offered to a place in line is held this long for its ticket (the place itself is held until its turn)
    poll_min_s: float = 1.0  # retry_after_s bounds for waiting clients, before jitter
    poll_max_s: float = 10.0
    poll_jitter: float = 0.25  # every retry_after_s is multiplied by 1 +- this, at random
    max_waiting: int = 1_000_000  # places in line, node-wide; beyond it joins get 503
    rate_window_s: float = 30.0  # the measured admission rate (for estimates) looks back this far
    # health: a sample is unhealthy if any of these is exceeded
    health_period_s: float = 1.0
    max_loop_lag_s: float = 0.1  # event loop lag (worst in the period)
    max_loop_cpu: float = 0.85  # event loop thread CPU, fraction of one core
    max_join_p95_s: float = 0.25  # join answer time, 95th percentile in the period
    # degradation ladder: one level up per escalate_after unhealthy samples in a row, one down
    # per recover_after healthy ones
    escalate_after: int = 2
    recover_after: int = 10
    secret: bytes | None = None  # HMAC key for tokens; default: AMPHI_SECRET or <data_dir>/secret


@dataclass(frozen=True)
class StageConfig:
    """The room: who may be on stage and how speakers' connections are watched
    (docs/stage.md)."""

    max_cohosts: int = 2
    max_speakers: int = 10
    grant_ttl_s: float = 6 * 3600.0  # a participant's grant lives this long
    request_rate_per_s: float = 0.5  # requests to speak per client address (GCRA) ...
    request_burst: int = 5  # ... and how many at once
    return_bitrate: int = 48_000  # Opus bit rate of each speaker's return feed
    silence_timeout_s: float = 15.0  # a speaker's peer that sends no audio this long is hung up
    garbage_timeout_s: float = 5.0  # ... or only undecodable packets this long
    event_interval_s: float = 0.2  # stage events are coalesced to at most one per this
    max_event_streams: int = 20_000  # open SSE connections per node; beyond it 503


@dataclass(frozen=True)
class DefenseConfig:
    """Shedding floods and telling a surge from an attack (docs/defense.md). Rates are
    requests per second to the join endpoint; bursts are how many at once after a quiet
    spell. Sized so that a few thousand people behind one carrier-grade NAT can still join
    at the scheduled minute: one address alone cannot flood, many addresses meet the
    global budget and the proof of work."""

    address_rate_per_s: float = 50.0  # GCRA per client address (joins, polls, renewals) ...
    address_burst: int = 500
    prefix_rate_per_s: float = 200.0  # ... per network prefix (IPv4 /24, IPv6 /48) ...
    prefix_burst: int = 2000
    join_rate_per_s: float = 2000.0  # ... and node-wide, for fresh joins only (not polls or renewals)
    join_burst: int = 4000
    max_tracked: int = 65_536  # keys per limit table; when full the least recently seen is forgotten
    max_in_flight_per_address: int = 1000  # requests in progress from one address (blocking reloads too)
    max_header_bytes: int = 8192  # all request headers of a join together; above it 431
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-For is believed (an edge); none by default
    # proof of work
    pow_mode: str = "auto"  # on | off | auto (on while the node-level detector says attack)
    pow_bits: int = 16  # leading zero bits of SHA-256 at the default difficulty (about 1 s in a browser)
    pow_max_extra_bits: int = 4  # pressure adds up to this many bits (each doubles the work)
    pow_ttl_s: float = 60.0  # a challenge is valid this long after it is issued
    pow_max_seen: int = 200_000  # solved challenges remembered until they expire; when full, new solutions get 503
    # before any verdict: a fresh join from an address (a prefix) that made more than this many fresh join
    # attempts in the last two detector periods must solve the proof of work, unless it is switched off
    suspect_address_joins: int = 8
    suspect_prefix_joins: int = 24
    # detector
    detector_period_s: float = 2.0  # a verdict every period, per Space and per node
    detector_window_s: float = 4.0  # rates are measured over this much of the recent past
    follow_up_s: float = 5.0  # an admitted join is expected to fetch media within this (a waiting one: to poll
    # within its retry_after_s plus this)
    light_joins: int = 2  # an address with at most this many fresh joins in a window looks like one person
    surge_join_rate: float = 20.0  # fresh joins per second from light addresses that come back: a surge
    attack_rate: float = 20.0  # bad join requests per second (see docs/defense.md) ...
    attack_share: float = 0.2  # ... that are at least this share of the join endpoint's traffic: an attack
    bad_token_share: float = 0.05  # invalid media tokens: this share of the media requests (and attack_rate per s)
    enter_after: int = 2  # a new label needs this many verdicts in a row ...
    leave_after: int = 4  # ... and the current one ends after this many verdicts of something else


@dataclass(frozen=True)
class IceConfig:
    """How speakers' WebRTC connections find the node (docs/deploying.md): the host addresses the
    node offers in its ICE candidates, and the STUN and TURN servers handed to clients (the page's
    config, WHIP's ``Link`` headers). TURN credentials are TURN REST ephemeral ones (coturn's
    ``use-auth-secret``): username ``<expiry>:<user>``, password base64(HMAC-SHA1(secret, username))."""

    addresses: tuple[str, ...] = ("127.0.0.1",)  # host addresses offered in ICE candidates (IP literals)
    announced: tuple[str, ...] = ()  # 1:1 NAT: offered in place of ``addresses``, one for one (the public address
    # each is reached at); none: the addresses themselves
    stun: tuple[str, ...] = ()  # stun:host:port URLs
    turn: tuple[str, ...] = ()  # turn:host:port?transport=udp|tcp, turns:... URLs
    turn_secret: str | None = None  # the TURN server's static-auth-secret
    turn_ttl_s: float = 24 * 3600.0  # an ephemeral TURN credential lives this long


@dataclass(frozen=True)
class KeysConfig:
    """API keys: who may create Spaces and manage any Space (docs/keys.md). Each key has a GCRA
    budget (cluster-wide with --redis); failed key attempts are limited per client address."""

    rate_per_s: float = 2.0  # writes (creates, starts, ends, ...) per second with one key ...
    burst: int = 30  # ... and how many at once after a quiet spell
    failure_rate_per_s: float = 0.5  # failed key attempts (wrong or revoked keys) per client address ...
    failure_burst: int = 20  # ... and how many at once; beyond it 429 before the key is even looked at
    max_tracked: int = 65_536  # client addresses whose failures are remembered (least recently seen forgotten)


@dataclass(frozen=True)
class ClusterConfig:
    """Several nodes sharing state (docs/cluster.md). Without ``redis_url`` the node keeps
    everything in memory, alone. The node's name in the registry is ``Config.node_id``."""

    redis_url: str | None = None  # e.g. redis://127.0.0.1:6379/0
    prefix: str = "amphi:"  # every Redis key starts with this


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path("data")
    http: HttpConfig = field(default_factory=HttpConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    ice: IceConfig = field(default_factory=IceConfig)  # speakers' WebRTC: addresses, STUN, TURN
    keys: KeysConfig = field(default_factory=KeysConfig)  # API keys: rate limits (docs/keys.md)
    node_id: str = "origin"  # this node's name, in every log line and sample; edges route /o/<node_id>/media/ to it
    edges: tuple[str, ...] = ()  # base URLs of the edge caches listeners are sent to; none: this node serves them
    demo: bool = False  # create a demo Space with a built-in speaker at start-up
    # the operator's key for /dashboard and /metrics (docs/observability.md); default
    # $AMPHI_OPERATOR_KEY, else <data_dir>/operator_key (made once, mode 0600)
    operator_key: str | None = None
    # where the pages' npm libraries are (Shaka Player, hls.js, uPlot): default $AMPHI_NODE_MODULES; None: the
    # installed wheel's copy, else node_modules beside a source checkout (amphi.web.assets.root decides)
    web_assets_dir: Path | None = field(
        default_factory=lambda: Path(p) if (p := os.environ.get("AMPHI_NODE_MODULES")) else None
    )
