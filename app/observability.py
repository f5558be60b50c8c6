"""Request ids, one JSON log line per request, and Prometheus metrics.

Metrics work with several uvicorn workers through prometheus_client's multiprocess mode: `workshop
serve` points PROMETHEUS_MULTIPROC_DIR at a fresh directory, so /metrics on any worker reports
the sum over all of them.
"""

import json
import logging
import os
import re
import sys
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter("workshop_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "workshop_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
POSTS_INGESTED = Counter("workshop_posts_ingested_total", "Essays created or changed", ["action"])
AUTH_FAILURES = Counter("workshop_auth_failures_total", "Refused API authentications", ["reason"])
CACHE_LOOKUPS = Counter("workshop_response_cache_total", "Response cache lookups", ["result"])

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# A response-cache hit is answered before routing, so it has no route: it gets the route this
# worker saw for the same path on the miss that filled the cache. Bounded, like the cache.
_ROUTE_OF_PATH: dict[str, str] = {}
_ROUTE_MEMORY = 10_000
# The method is a metric label: any other token a client sends (h11 accepts them all) counts
# as OTHER, so a client cannot mint new time series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
_log = logging.getLogger("workshop.access")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


_access_json = False


def _access_log(fields: dict[str, Any]) -> None:
    """One line per request. The JSON form is written straight to stderr: the logging module's
    record, handler and formatter machinery was a fifth of a cached page's cost (py-spy)."""
    if _access_json:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        doc = {"time": stamp, "level": "info", "message": "request", **fields}
        sys.stderr.write(json.dumps(doc, ensure_ascii=False) + "\n")
    else:
        _log.info("request", extra={"fields": fields})


def configure_logging(as_json: bool) -> None:
    global _access_json
    _access_json = as_json
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter() if as_json else logging.Formatter("%(message)s %(fields)s")
    )
    _log.handlers[:] = [handler]
    _log.setLevel(logging.INFO)
    _log.propagate = False
    # app/problems.py logs the database errors it answers with 503 here, with their traceback.
    errors = logging.getLogger("workshop.errors")
    errors_handler = logging.StreamHandler(sys.stderr)
    errors_handler.setFormatter(_JsonFormatter() if as_json else logging.Formatter())
    errors.handlers[:] = [errors_handler]
    errors.propagate = False


class RequestLogMiddleware:
    """Pure ASGI (no per-request Request objects): adds X-Request-ID, logs, counts and times."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _REQUEST_ID.match(incoming) else os.urandom(16).hex()
        status = 500
        response_headers: list[tuple[bytes, bytes]] = []

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_headers
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers = list(message.get("headers", []))
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - start
            route = scope.get("route")
            label = getattr(route, "path", None) or scope.get("workshop.route_label")
            if label:
                if len(_ROUTE_OF_PATH) >= _ROUTE_MEMORY:
                    _ROUTE_OF_PATH.clear()
                _ROUTE_OF_PATH[scope["path"]] = label
            else:
                label = _ROUTE_OF_PATH.get(scope["path"], "unmatched")
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            REQUESTS.labels(method, label, str(status)).inc()
            LATENCY.labels(label).observe(duration)
            _count_outcome(scope["method"], label, status, dict(response_headers))
            _access_log(
                {
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(duration * 1000, 2),
                    "request_id": request_id,
                }
            )


# The ingest API's answers, read off the response so every route and middleware is counted
# without each of them importing the metrics.
_INGEST_ACTIONS = {
    ("POST", 201): "created",
    ("POST", 200): "unchanged",
    ("PUT", 200): "updated",
    ("DELETE", 204): "deleted",
}


def _count_outcome(method: str, route: str, status: int, headers: dict[bytes, bytes]) -> None:
    if route.startswith("/api/"):
        replayed = headers.get(b"idempotent-replayed") == b"true"
        action = _INGEST_ACTIONS.get((method, status))
        if action and not replayed and method in ("POST", "PUT", "DELETE"):
            POSTS_INGESTED.labels(action).inc()
        if status == 401:
            bad = b'error="invalid_token"' in headers.get(b"www-authenticate", b"")
            AUTH_FAILURES.labels("invalid_token" if bad else "missing_token").inc()
        elif status == 429:
            AUTH_FAILURES.labels("locked_out").inc()
    cache = headers.get(b"x-cache")  # set by the response cache middleware: hit or miss
    if cache in (b"hit", b"miss"):
        CACHE_LOOKUPS.labels(cache.decode()).inc()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def metrics_response(_: Request) -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest()
    return Response(body, media_type=CONTENT_TYPE_LATEST)
