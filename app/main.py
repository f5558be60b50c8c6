"""The application factory: `create_app(settings)` builds a Workshop app on its own database."""

import copy
import ctypes
import gc
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Coroutine
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app import pagestore, problems, websub
from app.bodygate import BodyGate
from app.cache import Answer, ResponseCache
from app.config import Settings
from app.db import make_engine
from app.essaypage import StoredPages
from app.fragments import Renderer
from app.observability import (
    RequestLogMiddleware,
    answered,
    configure_logging,
    metrics_response,
    request_id_of,
)
from app.routes import feeds, ingest, ops, reader
from app.routes.conditional import gzip_acceptable
from app.templating import StaticAssets, make_templates

# For every answer the routes make (stored essay pages are stored gzipped). The app serves only
# text (HTML, XML, JSON, CSS), so no media type is left out: Starlette's default list of them is
# normalized again for every request, a fifteenth of an uncached essay page's cost.
GZIP: dict[str, Any] = {"minimum_size": 500, "exclude_content_types": ()}


class GZip(GZipMiddleware):
    """Starlette's gzip layer, told our decision (`gzip_acceptable`), which the response cache,
    the stored essay pages, the API's posts and the static files share. Its own looks for
    "gzip" anywhere in the first field line, so `gzip;q=0` (not acceptable, RFC 9110 section
    12.5.3) got gzip. It is handed the request with one Accept-Encoding saying what we decided
    (`gzip`, or none), rather than a copy of its own code with the test swapped."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            asked = [v for n, v in scope["headers"] if n == b"accept-encoding"]
            if asked and asked != [b"gzip"]:  # else Starlette's own test already agrees
                # In place, not a copy: the layers outside read what the routes record in the
                # scope (the route's template, for the request log and the metrics).
                headers = [(n, v) for n, v in scope["headers"] if n != b"accept-encoding"]
                if gzip_acceptable(b",".join(asked)):
                    headers.append((b"accept-encoding", b"gzip"))
                scope["headers"] = headers
        await super().__call__(scope, receive, send)


class Workshop(RequestLogMiddleware):
    """What a worker serves: the request log around the stored essay pages around the response
    cache around the FastAPI app.

    The log, the stored pages and the cache are plain ASGI wrappers outside FastAPI, so a stored
    or cached answer never enters FastAPI's own middleware stack (error handling, telemetry,
    body limits) or its router: that stack cost more than half of a cache hit (py-spy). This
    object is the request log itself (one call less per request); everything else (`state`,
    `routes`, `openapi()`...) is the FastAPI app's, reached through it.
    """

    def __init__(
        self,
        fastapi: FastAPI,
        serve: ASGIApp,
        stored: reader.StoredEssayPages,
        cache: ResponseCache | None,
    ) -> None:
        super().__init__(serve)
        self.fastapi = fastapi
        self._stored, self._cache = stored, cache

    def front_door(
        self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]]
    ) -> "Answer | Coroutine[Any, Any, Answer | None] | None":
        """The answer to a request that memory or one local read gives without waiting (a
        stored essay page, a response-cache hit), counted and logged as this request log does
        every answer; for a stored page that must be read on the event loop (PostgreSQL) or in
        a thread (SQLite, its bytes on disk), the coroutine that reads it and gives the answer
        so counted (None: ask through ASGI after all); None: ask through ASGI. The server asks
        this before it builds an ASGI request (`app/serving.py`); the answer is the one ASGI
        would give, asked in the same order."""
        start = time.perf_counter()
        label: str | None = reader.ESSAY_ROUTE
        answer = self._stored.answer_now(method, path, headers)
        if answer is None and self._cache is not None:
            label, answer = None, self._cache.answer_now(method, path, query, headers)
        if answer is None:
            return None
        if not isinstance(answer, tuple):
            return self._answered_later(method, path, headers, start, answer)
        return _counted(method, path, label, headers, start, answer)

    async def _answered_later(
        self,
        method: str,
        path: str,
        headers: list[tuple[bytes, bytes]],
        start: float,
        reading: "Coroutine[Any, Any, Answer | None]",
    ) -> Answer | None:
        answer = await reading
        if answer is None:
            return None
        return _counted(method, path, reader.ESSAY_ROUTE, headers, start, answer)

    async def unexpected(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The answer to a request that raised outside FastAPI (the stored pages, the response
        cache), as FastAPI answers one that raised inside it: the site's error page or a
        problem."""
        response = problems.unexpected_error(Request({**scope, "app": self.fastapi}))
        await response(scope, receive, send)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fastapi, name)


def _counted(
    method: str,
    path: str,
    label: str | None,
    headers: list[tuple[bytes, bytes]],
    start: float,
    answer: Answer,
) -> Answer:
    """The front door's answer, counted and logged, with the request's id."""
    status, answer_headers, body = answer
    request_id, id_header = request_id_of(headers)
    answered(method, path, label, status, answer_headers, start, request_id)
    return status, [*answer_headers, id_header], body


def create_app(settings: Settings | None = None) -> Workshop:
    settings = settings or Settings()
    app = FastAPI(
        title="Workshop",
        version="1",
        summary="Essays from a market-debate engine: reader site, feeds and the ingest API.",
    )
    app.state.settings = settings
    app.state.engine = make_engine(settings)
    app.state.templates = make_templates(settings)
    app.state.renderer = Renderer(app.state.templates)  # the essay page's stored HTML
    problems.install(app)
    _answer_head_like_get(ops.router, reader.router, ingest.router, feeds.router)
    app.include_router(ops.router)
    app.include_router(reader.router)
    app.include_router(ingest.router)
    app.include_router(feeds.router)
    websub.install(app)  # pings the WebSub hub after each write, when one is configured
    app.add_route("/metrics", metrics_response, include_in_schema=False)
    static = StaticAssets(directory=str(files("app.static")), compress_from=GZIP["minimum_size"])
    app.mount("/static", static, name="static")
    # Request log -> stored essay pages (answered before anything else) -> response cache
    # (answers before FastAPI) -> FastAPI's own stack -> body gate -> gzip -> routes. (Of
    # `add_middleware`, the last added runs first.)
    app.add_middleware(GZip, **GZIP)
    app.add_middleware(BodyGate, max_body_bytes=settings.max_body_bytes)
    serve: ASGIApp = app
    cache = None
    if settings.response_cache:
        serve = cache = ResponseCache(
            serve,
            engine=app.state.engine,
            max_entries=settings.response_cache_max_entries,
            max_bytes=settings.response_cache_max_bytes,
            max_entry_bytes=settings.response_cache_max_entry_bytes,
        )
    app.state.stored_pages = StoredPages(
        app.state.engine,
        app.state.renderer.page_key,
        memo=settings.response_cache,
        local=pagestore.for_worker(settings),
    )
    stored = reader.StoredEssayPages(serve, app.state.stored_pages)
    configure_logging(settings.log_json)
    return Workshop(app, stored, stored, cache)  # the log sees every answer, cached or not


def _answer_head_like_get(*routers: APIRouter) -> None:
    """HEAD wherever a route answers GET (RFC 9110 section 9.3.2), as Starlette's own routes do
    and FastAPI's do not: link checkers, uptime probes, CDNs and HTTP clients send HEAD, and got
    405. The route runs as for GET, with the same checks; the server sends no body for HEAD.

    A documented route keeps its one GET operation in the schema (HEAD is implied by GET, and a
    HEAD operation per GET would double the API's operations and their ids): a copy of it that
    answers HEAD, left out of the schema, joins the router. Called before the routers are
    included, so the app's routing sees every route they hold. (The routers are the modules'
    own, shared by every app built: a path that answers HEAD already is left as it is.)"""
    for router in routers:
        routes = [route for route in router.routes if isinstance(route, APIRoute)]
        answered = {route.path for route in routes if route.methods and "HEAD" in route.methods}
        for route in routes:
            if not route.methods or "GET" not in route.methods or route.path in answered:
                continue
            if route.include_in_schema:
                head = copy.copy(route)
                head.methods, head.include_in_schema = {"HEAD"}, False
                router.routes.append(head)
            else:
                route.methods.add("HEAD")


def app_from_env() -> Workshop:
    """Entry point for `uvicorn --factory app.main:app_from_env` (each worker builds its own)."""
    _end_with_the_supervisor()
    app = create_app(Settings())
    # What the worker built to serve (modules, the app, templates, statements) lives as long
    # as the worker: the cyclic garbage collector need not walk it again. Each full collection
    # walked all of it, pausing the worker for tens of milliseconds.
    gc.freeze()
    # A young-generation collection every 10,000 allocations, not 700: a cached page
    # allocates a few dozen objects, and the collections cost it a twentieth of its time
    # (in-process, 10.8 -> 10.3 us a request). Cycles are still collected, a little later.
    gc.set_threshold(10_000)
    return app


def _end_with_the_supervisor() -> None:
    """A worker of `workshop serve --workers N` stops (SIGTERM, a clean stop) when the serve
    that started it dies. Killed with SIGKILL, the serve left its workers running for good,
    holding the port (a new serve could not bind it) and serving the old code. Linux only; a
    single-worker serve runs in the serve's own process and is left alone."""
    parent = multiprocessing.parent_process()
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent.pid:  # it died before the call above
        os.kill(os.getpid(), signal.SIGTERM)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
