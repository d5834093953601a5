"""One error hierarchy for all of Amphi.

Every error a user can cause is an ``AmphiError`` with an HTTP status and a stable
machine-readable ``code`` (a 401 also names its scheme: ``WWW-Authenticate: Bearer``); the web layer maps them to responses in one place
(``amphi.web.asgi.error_parts``, for the raw endpoints and Starlette alike) and nowhere else.

    AmphiError                      500 internal
    ├── HostedElsewhere             307 hosted_elsewhere (another node hosts the Space: Location)
    ├── BadRequest                  400 bad_request
    │   ├── MalformedBody           400 malformed_body
    │   ├── InvalidSdp              400 invalid_sdp
    │   ├── BadTicket               400 bad_ticket       (a waiting-room ticket not ours)
    │   └── BeyondLiveEdge          400 beyond_live_edge
    ├── Unauthorized                401 unauthorized     (no credentials)
    │   ├── TokenExpired            401 token_expired    (join again)
    │   ├── ApiKeyRequired          401 api_key_required (no API key; docs/keys.md)
    │   ├── InvalidApiKey           401 invalid_api_key  (not a key this deployment issued)
    │   └── RevokedApiKey           401 revoked_api_key  (the operator revoked it)
    ├── Forbidden                   403 forbidden        (wrong credentials)
    │   ├── BadSolution             403 bad_solution     (a proof-of-work answer that does not check out)
    │   └── ChallengeReused         403 challenge_reused (a solved challenge sent again)
    ├── NotFound                    404 not_found
    ├── MethodNotAllowed            405 method_not_allowed
    ├── Conflict                    409 conflict
    │   └── IllegalTransition       409 illegal_transition
    ├── PreconditionFailed          412 precondition_failed (If-Match: not the WHIP session's ETag)
    ├── PayloadTooLarge             413 payload_too_large
    ├── UnsupportedMediaType        415 unsupported_media_type
    ├── Misdirected                 421 misdirected      (not this node's Space now: x-amphi-host names its host)
    ├── Unprocessable               422 unprocessable    (a WHIP PATCH asking what is not supported)
    ├── TooManyRequests             429 too_many_requests (retry later)
    │   ├── TooEarly                429 too_early        (polled before its time)
    │   ├── AddressRateLimited      429 address_rate_limited (this client address joins too fast)
    │   ├── PrefixRateLimited       429 prefix_rate_limited  (its network prefix joins too fast)
    │   ├── JoinBudgetSpent         429 join_budget_spent    (the node's global join budget)
    │   ├── TooManyConnections      429 too_many_connections (requests in flight from one address)
    │   ├── KeyRateLimited          429 key_rate_limited     (this API key is used faster than its budget)
    │   ├── KeyFailuresLimited      429 key_failures_limited (too many failed key attempts from this address)
    │   └── ChallengeRequired       429 challenge_required   (solve the proof of work, see docs/defense.md)
    ├── HeadersTooLarge             431 headers_too_large
    └── Unavailable                 503 unavailable      (retry later)
        └── TooBusy                 503 too_busy
"""

from __future__ import annotations


class AmphiError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"error": self.code, "message": self.message}
        if self.retry_after_s is not None:
            body["retry_after_s"] = self.retry_after_s
        return body


class HostedElsewhere(AmphiError):
    """The Space's media and room live on another node; ``location`` is the same request there."""

    status = 307
    code = "hosted_elsewhere"

    def __init__(self, message: str, *, location: str) -> None:
        super().__init__(message)
        self.location = location

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "location": self.location}


class BadRequest(AmphiError):
    status = 400
    code = "bad_request"


class MalformedBody(BadRequest):
    code = "malformed_body"


class InvalidSdp(BadRequest):
    code = "invalid_sdp"


class BadTicket(BadRequest):
    code = "bad_ticket"


class BeyondLiveEdge(BadRequest):
    code = "beyond_live_edge"


class Unauthorized(AmphiError):
    status = 401
    code = "unauthorized"
    challenge = 'Bearer realm="amphi"'  # WWW-Authenticate (RFC 6750)


class TokenExpired(Unauthorized):
    code = "token_expired"


class ApiKeyRequired(Unauthorized):
    code = "api_key_required"


class InvalidApiKey(Unauthorized):
    code = "invalid_api_key"
    challenge = 'Bearer realm="amphi", error="invalid_token"'


class RevokedApiKey(Unauthorized):
    code = "revoked_api_key"
    challenge = 'Bearer realm="amphi", error="invalid_token", error_description="revoked"'


class Forbidden(AmphiError):
    status = 403
    code = "forbidden"


class HostMuted(Forbidden):
    code = "host_muted"


class NotOnStage(Forbidden):
    code = "not_on_stage"


class RemovedFromSpace(Forbidden):
    code = "removed"


class NotFound(AmphiError):
    status = 404
    code = "not_found"


class MethodNotAllowed(AmphiError):
    status = 405
    code = "method_not_allowed"


class Conflict(AmphiError):
    status = 409
    code = "conflict"


class IllegalTransition(Conflict):
    code = "illegal_transition"


class StageFull(Conflict):
    code = "stage_full"


class BadSolution(Forbidden):
    code = "bad_solution"


class ChallengeReused(Forbidden):
    code = "challenge_reused"


class PreconditionFailed(AmphiError):
    status = 412
    code = "precondition_failed"


class PayloadTooLarge(AmphiError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(AmphiError):
    status = 415
    code = "unsupported_media_type"


class Misdirected(AmphiError):
    """Media of a Space this node does not host (any more): ``host`` is the node that does,
    sent as ``x-amphi-host`` so an edge fetches from it instead (docs/cluster.md)."""

    status = 421
    code = "misdirected"

    def __init__(self, message: str, *, host: str) -> None:
        super().__init__(message)
        self.host = host

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "host": self.host}


class Unprocessable(AmphiError):
    status = 422
    code = "unprocessable"


class TooManyRequests(AmphiError):
    status = 429
    code = "too_many_requests"


class TooEarly(TooManyRequests):
    code = "too_early"


class AddressRateLimited(TooManyRequests):
    code = "address_rate_limited"


class PrefixRateLimited(TooManyRequests):
    code = "prefix_rate_limited"


class JoinBudgetSpent(TooManyRequests):
    code = "join_budget_spent"


class TooManyConnections(TooManyRequests):
    code = "too_many_connections"


class KeyRateLimited(TooManyRequests):
    code = "key_rate_limited"


class KeyFailuresLimited(TooManyRequests):
    code = "key_failures_limited"


class ChallengeRequired(TooManyRequests):
    """Join again with the challenge solved: ``{"challenge": C, "solution": S}``."""

    code = "challenge_required"

    def __init__(self, message: str, challenge: dict[str, object], *, retry_after_s: float | None = None) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.challenge = challenge

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "challenge": self.challenge}


class HeadersTooLarge(AmphiError):
    status = 431
    code = "headers_too_large"


class Unavailable(AmphiError):
    status = 503
    code = "unavailable"


class TooBusy(Unavailable):
    code = "too_busy"
