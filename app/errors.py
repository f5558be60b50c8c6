"""Domain errors raised by the services; app/problems.py maps them to HTTP problem responses."""


class WorkshopError(Exception):
    """Base of every domain error. `status` is the HTTP status the web layer answers with."""

    status = 400
    title = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, str]] | None = None,
        **extra: object,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        self.headers = headers or {}  # HTTP headers the answer carries (WWW-Authenticate, ...)
        self.errors = errors or []  # per-field errors: [{"field": ..., "message": ...}]


class PostNotFound(WorkshopError):
    status = 404
    title = "Post not found"


class PostGone(WorkshopError):
    status = 410
    title = "Post deleted"


class CycleConflict(WorkshopError):
    status = 409
    title = "Cycle already has a different essay"


class IdTaken(WorkshopError):
    status = 409
    title = "Post id already taken"


class PreconditionFailed(WorkshopError):
    status = 412
    title = "Precondition failed"


class RevisionNotFound(WorkshopError):
    status = 404
    title = "Revision not found"
