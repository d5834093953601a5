"""Where the services' typed results become HTTP answers: a join's seat, place in line or
replay (``amphi.control.listeners``), grants, requests to speak and invites
(``amphi.services.rooms``). A Space's status is its own JSON (``SpaceStatus.to_json``). Errors
become HTTP in one place too: ``amphi.web.asgi.error_parts`` (every ``AmphiError`` carries
its status and code, ``amphi.core.errors``)."""

from __future__ import annotations

import time

from amphi.control.admission import FRONT_POLL_S_PER_PLACE, MAX_GAPS, Line
from amphi.control.listeners import Ended, InLine, JoinResult, Seated
from amphi.control.spaces import Space
from amphi.core.config import AdmissionConfig
from amphi.services.rooms import Grant, Invited, Requested
from amphi.services.spaces import iso
from amphi.web.routes import MEDIA_FILES


RENEW_FALLBACK = 0.75  # the API renewal, only if no live-playlist reload renewed the token (at half its life)


def join_answer(result: JoinResult) -> tuple[int, dict[str, object]]:
    """(status, body) of ``POST /api/spaces/<id>/join`` (docs/admission.md)."""
    space = result.space
    if isinstance(result, Ended):
        return 200, {"status": "ended", "state": "ended", "playlist": result.replay, "replay": result.replay,
                     "download": result.download}
    common = {"state": space.state.value, "starts_at": iso(space.starts_at)}
    if isinstance(result, InLine):
        return 202, {"status": "waiting", **common, "ticket": result.ticket, "position": result.position,
                     "waiting": result.waiting, "estimated_wait_s": result.estimated_wait_s,
                     "retry_after_s": round(result.retry_after_s, 2), "order": result.order,
                     "requeued": result.requeued, "place": result.place, "line": f"/api/spaces/{space.id}/line"}
    assert isinstance(result, Seated)
    ttl = result.expires - time.time()
    media_playlist = f"{result.playlist.rsplit('/', 1)[0]}/{MEDIA_FILES['live']}"  # beside the multivariant
    return 200, {"status": "admitted", **common, "playlist": result.playlist, "media_playlist": media_playlist,
                 "token": result.token,
                 "expires_at": iso(result.expires), "expires_in_s": round(ttl, 1),
                 "renew_after_s": round(ttl * RENEW_FALLBACK, 1), "renewed": result.renewed, "edges": list(result.edges)}


def line_answer(space: Space, at: float, line: Line, stretch: float, cfg: AdmissionConfig) -> dict[str, object]:
    """``GET /api/spaces/<id>/line``: the line document (docs/admission.md, "Waiting without
    polling"). A client with place number n is at ``Line.position(n)``; once n < called its
    turn has come and it redeems its ticket (``POST join``). ``poll`` is how the API would
    advise it: ``poll_after`` times ``stretch``, jittered."""
    return {"space": space.id, "state": space.state.value, "starts_at": iso(space.starts_at), "at": at,
            "called": line.called, "next": line.next, "gaps": list(line.gaps), "gaps_complete": len(line.gaps) < MAX_GAPS,
            "waiting": line.waiting, "pooled": line.pooled, "free": line.free, "wait_s": round(line.wait_s, 3),
            "admit_rate_per_s": line.admit_rate_per_s, "line_rate_per_s": round(line.line_rate_per_s, 3),
            "poll": poll_advice(cfg, stretch)}


def poll_advice(cfg: AdmissionConfig, stretch: float) -> dict[str, float]:
    """The line document's ``poll``: how a waiting client should space its reads
    (``amphi.loadtest.profiles.line_retry_s`` reads it, as does the page's ``lineRetry``)."""
    return {"min_s": cfg.poll_min_s, "max_s": cfg.poll_max_s, "per_place_s": FRONT_POLL_S_PER_PLACE,
            "jitter": cfg.poll_jitter, "stretch": stretch}


def parse_line(doc: dict[str, object]) -> Line:
    """A line document read back (the load generator's and the simulator's clients); KeyError,
    TypeError or ValueError if it is not one."""
    return Line(int(doc["called"]), int(doc["next"]), tuple(int(g) for g in doc["gaps"]),  # type: ignore[arg-type, union-attr, call-overload]
                int(doc["waiting"]), int(doc["pooled"]), int(doc["free"]), float(doc["wait_s"]),  # type: ignore[arg-type]
                float(doc["admit_rate_per_s"]), float(doc["line_rate_per_s"]))  # type: ignore[arg-type]


def grant_json(g: Grant) -> dict[str, object]:
    return {"participant": g.participant, "grant": g.grant, "expires_at": iso(g.expires)}


def requested_json(r: Requested) -> dict[str, object]:
    """``POST /stage/requests``: a newcomer's grant, or the known participant's id."""
    head = grant_json(r.grant) if r.grant is not None else {"participant": r.you.id}
    return {**head, "you": r.you.private()}


def invited_json(i: Invited) -> dict[str, object]:
    return {**grant_json(i.grant), "invite_url": i.url}


def outcome(result: JoinResult) -> str:
    """A join's outcome as the metrics count it."""
    if isinstance(result, InLine):
        return "waiting"
    if isinstance(result, Ended):
        return "ended"
    return "renewed" if result.renewed else "admitted"
