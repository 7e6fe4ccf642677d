"""Domain exceptions. Each message says what went wrong and what to do about it."""


class NicheloopError(Exception):
    """Base class of every error nicheloop raises on purpose."""


class InvalidInput(NicheloopError):
    """The caller sent something we cannot use (maps to HTTP 4xx)."""


class NotFound(NicheloopError):
    """An id the caller named does not exist (maps to HTTP 404)."""


class PayloadTooLarge(InvalidInput):
    """The request body is larger than the configured limit (maps to HTTP 413)."""


class NotReady(NicheloopError):
    """A component is not ready yet, e.g. no champion model is registered (HTTP 503)."""


class StackError(NicheloopError):
    """A local-stack process could not be started, reached or stopped."""


class GateRefused(NicheloopError):
    """A promotion gate refused the candidate; the message says which gate and why."""


class Conflict(NicheloopError):
    """The request clashes with the resource's current state, e.g. a lease held by someone else (409)."""


class BudgetSpent(NicheloopError):
    """A rate budget is used up (HTTP 429); ``retry_after_s`` says when to come back."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Overloaded(NotReady):
    """More work than the service takes at once; shed at once (HTTP 503) with ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UpstreamTimeout(NicheloopError):
    """A part the request needs (the predictor, the blob store, the event spool) did not answer in
    time (HTTP 504); the message names it."""


class ModelFailed(NicheloopError):
    """The model replica failed this request (HTTP 502): a version registered with a serving fault
    (:mod:`services.faults`) for a game day or the rollout benchmark."""


class Unauthenticated(NicheloopError):
    """The request names no credential, or one that is unknown, revoked or expired (HTTP 401)."""


class Forbidden(NicheloopError):
    """The caller's role may not do this (HTTP 403); the message names the roles that may."""
