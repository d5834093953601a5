"""Where the services' typed results become HTTP answers: a join's seat, place in line or
replay (``amphi.control.listeners``), grants, requests to speak and invites
(``amphi.services.rooms``). A Space's status is its own JSON (``SpaceStatus.to_json``). Errors
become HTTP in one place too: ``amphi.web.asgi.error_parts`` (every ``AmphiError`` carries
its status and code, ``amphi.core.errors``)."""

from __future__ import annotations

import time

from amphi.control.listeners import Ended, InLine, JoinResult, Seated
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
                     "requeued": result.requeued}
    assert isinstance(result, Seated)
    ttl = result.expires - time.time()
    media_playlist = f"{result.playlist.rsplit('/', 1)[0]}/{MEDIA_FILES['live']}"  # beside the multivariant
    return 200, {"status": "admitted", **common, "playlist": result.playlist, "media_playlist": media_playlist,
                 "token": result.token,
                 "expires_at": iso(result.expires), "expires_in_s": round(ttl, 1),
                 "renew_after_s": round(ttl * RENEW_FALLBACK, 1), "renewed": result.renewed, "edges": list(result.edges)}


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
