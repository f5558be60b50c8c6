"""RFC 9457 problem responses: one place that maps errors to HTTP answers."""

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Match, Mount

from app.errors import WorkshopError
from app.freshness import CACHE_CONTROL
from app.observability import REQUEST_ID, log_error

PROBLEM_JSON = "application/problem+json"


def problem(
    status: int, title: str, detail: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    """`("body", "debate", "minds", 0, "name")` -> `debate.minds.0.name`;
    `("query", "limit")` -> `limit`."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:] or parts
    return ".".join(str(p) for p in parts) or "body"


def _disk_full(exc: Exception) -> bool:
    """SQLite's SQLITE_FULL, or PostgreSQL's disk_full (SQLSTATE 53100)."""
    orig = getattr(exc, "orig", None)
    return "database or disk is full" in str(orig) or getattr(orig, "sqlstate", None) == "53100"


def wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get(
        "accept", ""
    )


def _for_readers(request: Request, response: Response) -> Response:
    """A reader-site error (not /api/) is an HTML page or problem+json by the request's Accept,
    so a shared cache must key on it; a 404 or 410 is kept as long as a page is, where caches
    would otherwise choose a time of their own (a CDN's default, a browser's heuristic)."""
    if request.url.path.startswith("/api/"):
        return response
    response.headers.add_vary_header("Accept")
    if response.status_code in (404, 410):
        response.headers.setdefault("Cache-Control", CACHE_CONTROL)
    return response


def unexpected_error(request: Request) -> Response:
    """The answer to a request that raised what nothing handles: a reader's error page, or a
    problem naming the request's id, under which the operator finds the traceback in the log.
    Nothing of the exception itself (its message, type or traceback) is in it."""
    if wants_html(request):
        from app.routes.reader import error_page

        try:
            response: Response = error_page(request, 500)
        except Exception as exc:  # the page itself is broken: the reader still gets words
            outcome = "the error page failed; answered 500 with a bare page"
            _log_error(request, exc, outcome)
            response = HTMLResponse(_BARE_ERROR_PAGE, status_code=500)
    else:
        request_id = request.scope.get(REQUEST_ID)
        detail = "an unexpected error stopped this request; it is logged under its request_id"
        extra = {"request_id": request_id} if request_id else {}
        response = problem(500, "Internal server error", detail, **extra)
    response.headers["Cache-Control"] = "no-store"  # a cache must not keep an accident
    return _for_readers(request, response)


def _log_error(request: Request, exc: Exception, outcome: str) -> None:
    """Log `exc` under the request's id, the one its answer carries in X-Request-ID (set by the
    request log, app/observability.py, before the request reaches the app)."""
    request_id = request.scope.get(REQUEST_ID) or "-"
    log_error(exc, outcome, request.scope["method"], request.scope["path"], request_id)


_BARE_ERROR_PAGE = (
    '<!doctype html><html lang="en"><meta charset="utf-8">'
    "<title>This page can’t be shown right now</title>"
    "<h1>This page can’t be shown right now</h1><p>Please try again in a minute.</p></html>"
)


def install(app: FastAPI) -> None:
    @app.exception_handler(WorkshopError)
    async def _domain(request: Request, exc: WorkshopError) -> Response:
        return _for_readers(request, _domain_answer(request, exc))

    def _domain_answer(request: Request, exc: WorkshopError) -> Response:
        if wants_html(request):
            from app.routes.reader import error_page

            return error_page(request, exc.status, exc)
        extra: dict[str, Any] = {
            k: v for k, v in exc.extra.items() if isinstance(v, str | int | float)
        }
        headers = dict(exc.headers)
        if "etag" in exc.extra:
            headers["ETag"] = str(exc.extra["etag"])
        if exc.errors:
            extra["errors"] = exc.errors
        return problem(exc.status, exc.title, exc.detail, headers=headers or None, **extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {
                "field": _field_name(err["loc"]),
                "message": err["msg"],
            }
            for err in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem(422, "Invalid request", detail, errors=errors)

    async def _database_unavailable(request: Request, exc: Exception) -> Response:
        # The database is down, restarting or locked past busy_timeout: a retryable 503, never a
        # 500. (Data errors should never get here: inputs are validated before any SQL runs;
        # the log line is how an operator learns that one did.)
        headers = {"Retry-After": "5"}
        status, title, detail = (
            503,
            "Service unavailable",
            "the database is unavailable; retry shortly",
        )
        if _disk_full(exc):
            # Not a bug and not transient: the operator must free space. Reads still work.
            status, title = 507, "Insufficient storage"
            detail = "the database's disk is full; nothing was stored; retry after space is freed"
            headers = {"Retry-After": "60"}
        _log_error(request, exc, f"database error answered {status}")
        if wants_html(request):
            from app.routes.reader import error_page

            response = error_page(request, status)
            response.headers.update(headers)
            return _for_readers(request, response)
        return _for_readers(request, problem(status, title, detail, headers=headers))

    app.add_exception_handler(DBAPIError, _database_unavailable)
    app.add_exception_handler(PoolTimeout, _database_unavailable)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # Starlette's ServerErrorMiddleware sends this answer, then raises `exc` on to the
        # request log, which logs it once, with the request's id (app/observability.py).
        return unexpected_error(request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        title, detail, headers = str(exc.detail), "", exc.headers
        if exc.status_code == 405:
            allowed = allowed_methods(request, (headers or {}).get("Allow", ""))
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
            detail = f"{request.method} is not allowed here; allowed: {', '.join(allowed)}"
        if wants_html(request):
            from app.routes.reader import error_page

            response = error_page(request, exc.status_code)
            response.headers.update(headers or {})
            return _for_readers(request, response)
        return _for_readers(
            request, problem(exc.status_code, title, detail or title, headers=headers)
        )


def allowed_methods(request: Request, fallback: str = "") -> list[str]:
    """Every method some route answers at this request's path (RFC 9110 section 15.5.6: a 405
    names them all). Starlette's own Allow named only the first route's: `POST` for
    /api/v1/posts, where GET lists the essays. Each method is tried on the routes as the router
    would (FastAPI nests included routers; mounts answer their own methods, and keep theirs)."""
    methods = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(
            not isinstance(route, Mount) and route.matches(scope)[0] == Match.FULL
            for route in request.app.router.routes
        ):
            methods.append(method)
    return methods or [m.strip() for m in fallback.split(",") if m.strip()]


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
