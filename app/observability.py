"""Request ids, one JSON log line per request, and Prometheus metrics.

Metrics work with several uvicorn workers through prometheus_client's multiprocess mode: `workshop
serve` points PROMETHEUS_MULTIPROC_DIR at a fresh directory, so /metrics on any worker reports
the sum over all of them.
"""

import asyncio
import itertools
import json
import logging
import os
import re
import sys
import time
from bisect import bisect_left
from contextvars import ContextVar
from json.encoder import encode_basestring as _json_string
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
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.asgi import at_shutdown

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
# Tracebacks of what went wrong while answering, one record each, with the request's id.
_errors = logging.getLogger("workshop.errors")
# The request's id in its ASGI scope: set by the request log, or by the front door
# (app/serving.py) when it hands on a request it logged an error for, so that every record and
# answer of one request names the same id.
REQUEST_ID = "workshop.request_id"


class LogFormatter(logging.Formatter):
    """Every log line the app configures (its own and, under `workshop serve`, uvicorn's): the
    time in UTC, ISO 8601 to the millisecond with `Z` as the access log's, then the level and
    the message; one JSON object per line, or plain text."""

    def __init__(self, as_json: bool = True) -> None:
        super().__init__()
        self.as_json = as_json

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{second}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        exception = self.formatException(record.exc_info) if record.exc_info else ""
        if record.stack_info:
            exception = "\n".join(filter(None, (exception, self.formatStack(record.stack_info))))
        if self.as_json:
            doc: dict[str, Any] = {
                "time": self.formatTime(record),
                "level": record.levelname.lower(),
                "message": record.getMessage(),
            }
            doc.update(fields)
            if exception:
                doc["exception"] = exception
            return json.dumps(doc, ensure_ascii=False)
        line = f"{self.formatTime(record)} {record.levelname} {record.getMessage()}"
        if fields:
            line += f" {fields}"
        return f"{line}\n{exception}" if exception else line


_access_json = False
_stamp_second = -1
_stamp = ""


def _access_log(method: str, path: str, status: int, duration: float, request_id: str) -> None:
    """One line per request. The JSON form is written straight to stderr and built by hand: the
    logging module's record/handler/formatter machinery and a `json.dumps` of a dict were a
    fifth of a cached page's cost (py-spy)."""
    global _stamp_second, _stamp
    if not _access_json:
        ms = round(duration * 1000, 2)
        fields = {"method": method, "path": path, "status": status, "duration_ms": ms}
        _log.info("request", extra={"fields": {**fields, "request_id": request_id}})
        return
    # The time as LogFormatter writes it; the second's part made once a second.
    now = time.time()
    second = int(now)
    if second != _stamp_second:
        _stamp_second, _stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    millisecond = int((now - second) * 1000)
    # The request id matches _REQUEST_ID (or is hex), so it needs no escaping.
    _write_line(
        f'{{"time": "{_stamp}.{millisecond:03d}Z", "level": "info", "message": "request", '
        f'"method": {_json_string(method)}, "path": {_json_string(path)}, "status": {status}, '
        f'"duration_ms": {duration * 1000:.2f}, "request_id": "{request_id}"}}\n'
    )


_pending_lines: list[str] = []
_LINES_EVERY = 0.02  # seconds: at most one write of lines this often
_lines_written_at = float("-inf")  # the event loop's clock (seconds since boot): never yet


def _write_line(line: str) -> None:
    """Lines go out together, in one write: at the start of the next turn of the event loop,
    or, when lines were written less than `_LINES_EVERY` ago, that long after them. A write
    system call per request was a twentieth of a cached page's cost, and one per turn still a
    twentieth under load (py-spy); a quiet worker still writes each line at once."""
    if not _pending_lines:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop: write it now
            sys.stderr.write(line)
            return
        wait = _lines_written_at + _LINES_EVERY - loop.time()
        if wait > 0:
            loop.call_later(wait, _flush_lines)
        else:
            loop.call_soon(_flush_lines)
    _pending_lines.append(line)


def _flush_lines() -> None:
    global _lines_written_at
    if not _pending_lines:  # written already (at shutdown)
        return
    try:
        _lines_written_at = asyncio.get_running_loop().time()
    except RuntimeError:
        pass
    text = "".join(_pending_lines)
    _pending_lines.clear()
    sys.stderr.write(text)


def configure_logging(as_json: bool) -> None:
    """The app's logs on stderr, each line as `LogFormatter` writes it: the access log, the
    error log and what the app's modules report (`app.*`: warnings of a cache or a page copy
    that could not be read). uvicorn's own lines are configured by `workshop serve`."""
    global _access_json
    _access_json = as_json
    formatter = LogFormatter(as_json)
    # Tracebacks: of the database errors app/problems.py answers with 503, of what nothing else
    # caught (`RequestLogMiddleware`) and of the front door's failures (app/serving.py).
    for name in ("workshop.access", "workshop.errors"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [_stderr_handler(formatter)]
        logger.setLevel(logging.INFO)
        logger.propagate = False
    # The app's modules log at WARNING and above (the root's level). They propagate still, so a
    # host that configures the root (a test's log capture) sees them too; with no handler of
    # their own they went to Python's last-resort handler, as bare text with no time.
    logging.getLogger("app").handlers[:] = [_stderr_handler(formatter)]
    # On the logger uvicorn's request cycle logs to: a logger's filters see only its own
    # records. (Added once, however often this is called.)
    logging.getLogger("uvicorn.error").addFilter(_logged_once)


def _stderr_handler(formatter: logging.Formatter) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    return handler


class _Tally:
    """This worker's request counts and latencies, added to the Prometheus metrics in batches.

    In multiprocess mode every `inc` and `observe` is a locked write into a memory-mapped file,
    and `labels()` a locked lookup: per request, that was about a sixth of a cached page's cost
    (py-spy). A request now adds to plain dicts; the sums are written at most FLUSH_SECONDS
    later, before this worker answers /metrics, and when it shuts down.
    """

    FLUSH_SECONDS = 1.0

    def __init__(self) -> None:
        self.counts: dict[tuple[Any, tuple[str, ...]], int] = {}
        # (method, route label, status, X-Cache or None) -> requests
        self.requests: dict[tuple[str, str, int, bytes | None], int] = {}
        # route label -> [observations per bucket (the last one +Inf)..., sum of durations]
        self.latency: dict[str, list[float]] = {}
        self.flush_due = False

    def request(
        self, method: str, label: str, status: int, cached: bytes | None, seconds: float
    ) -> None:
        """One answered request: its count (and cache lookup) and its latency."""
        key = (method, label, status, cached)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.observe(label, seconds)

    def count(self, metric: Any, *labels: str) -> None:
        key = (metric, labels)
        self.counts[key] = self.counts.get(key, 0) + 1
        self._schedule()

    def observe(self, label: str, seconds: float) -> None:
        row = self.latency.get(label)
        if row is None:
            row = self.latency[label] = [0.0] * (len(_BUCKETS) + 2)
        row[bisect_left(_BUCKETS, seconds)] += 1  # Prometheus buckets are "less or equal"
        row[-1] += seconds
        self._schedule()

    def _schedule(self) -> None:
        if self.flush_due:
            return
        try:
            asyncio.get_running_loop().call_later(self.FLUSH_SECONDS, self.flush)
        except RuntimeError:  # no event loop (a test calling in directly): write at once
            self.flush()
            return
        self.flush_due = True

    def flush(self) -> None:
        self.flush_due = False
        counts, self.counts = self.counts, {}
        requests, self.requests = self.requests, {}
        latency, self.latency = self.latency, {}
        for (method, label, status, cached), n in requests.items():
            REQUESTS.labels(method, label, str(status)).inc(n)
            if cached is not None:
                CACHE_LOOKUPS.labels(cached.decode()).inc(n)
        for (metric, labels), n in counts.items():
            metric.labels(*labels).inc(n)
        for label, row in latency.items():
            # prometheus_client has no "observe n times": add to the child's buckets and sum.
            child = LATENCY.labels(label)
            for bucket, observed in zip(child._buckets, row[:-1], strict=True):
                if observed:
                    bucket.inc(observed)
            child._sum.inc(row[-1])


_BUCKETS = LATENCY._upper_bounds[:-1]  # the finite bounds; +Inf is the last child bucket
_tally = _Tally()


class RequestLogMiddleware:
    """Pure ASGI (no per-request Request objects): adds X-Request-ID, logs, counts and times."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                receive = at_shutdown(receive, _flush_all)
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = scope.get(REQUEST_ID)
        if request_id is None:
            request_id, id_header = request_id_of(scope["headers"])
            scope[REQUEST_ID] = request_id  # for the answer to an error (app/problems.py)
        else:
            id_header = (b"x-request-id", request_id.encode())
        status = 500
        response_headers: list[tuple[bytes, bytes]] = []
        started = sent = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_headers, started, sent
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                response_headers = message.get("headers", [])
                message["headers"] = [*response_headers, id_header]
            elif not message.get("more_body", False):
                sent = True
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Logged here, once, with the request's id, and not raised on: uvicorn would log
            # it again, without the id, and answer in plain text. FastAPI has answered it
            # already (`problems.unexpected_error`) unless it was raised outside FastAPI (the
            # stored pages, the response cache). An answer it cut short stays so: uvicorn
            # then closes the connection, which tells the client that it is incomplete.
            if not started:
                outcome = "answered 500"
            elif sent:
                outcome = f"answered {status}"
            else:
                outcome = "answer cut short"
                _cut_short_logged.set(True)  # uvicorn's note of it is dropped (`_LoggedOnce`)
            log_error(exc, outcome, scope["method"], scope["path"], request_id)
            if not started:
                await self.unexpected(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or scope.get("workshop.route_label")
            answered(
                scope["method"], scope["path"], label, status, response_headers, start, request_id
            )

    async def unexpected(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The answer to a request whose app raised before it answered."""
        await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send)


# Set, in the task that serves one request, once the request log has logged its answer as cut
# short: uvicorn then notes in that task that the app "returned without completing response".
_cut_short_logged: ContextVar[bool] = ContextVar("workshop_cut_short_logged", default=False)
_UVICORN_INCOMPLETE = "ASGI callable returned without completing response."


class _LoggedOnce(logging.Filter):
    """uvicorn's error "ASGI callable returned without completing response.", dropped when the
    request log has logged that answer cut short, with its traceback and request id: it is the
    same failure, a second time, without either. Every other uvicorn line passes, and so does
    this one for an answer the request log did not log (an app that stopped without raising).

    Filtered, not avoided: an ASGI app can only end an answer as complete (a chunked body's
    last chunk, a Content-Length fulfilled), and a body cut short must not look complete. Left
    incomplete, uvicorn closes the connection, which tells the client; it also says so."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _UVICORN_INCOMPLETE and _cut_short_logged.get():
            _cut_short_logged.set(False)
            return False
        return True


_logged_once = _LoggedOnce()


def log_error(exc: BaseException, outcome: str, method: str, path: str, request_id: str) -> None:
    """One record of an error met while answering a request: its traceback, what the request
    got instead (`outcome`), and the request's method, path and id."""
    _errors.error(
        "%s %s: %s, %s (request %s)",
        method,
        path,
        type(exc).__name__,
        outcome,
        request_id,
        exc_info=exc,
        extra={"fields": {"method": method, "path": path, "request_id": request_id}},
    )


def request_id_of(headers: list[tuple[bytes, bytes]]) -> tuple[str, tuple[bytes, bytes]]:
    """The request's id (the client's X-Request-ID when well formed, else a new one) and the
    header that sends it back."""
    incoming = None
    for name, value in headers:
        if name == b"x-request-id":
            incoming = value.decode("latin-1")
            break
    request_id = incoming if incoming and _REQUEST_ID.match(incoming) else _new_request_id()
    return request_id, (b"x-request-id", request_id.encode())


def answered(
    method: str,
    path: str,
    label: str | None,
    status: int,
    response_headers: list[tuple[bytes, bytes]],
    start: float,
    request_id: str,
) -> None:
    """Count, time and log one answered request (`label`: its route, if known)."""
    duration = time.perf_counter() - start
    if label:
        if len(_ROUTE_OF_PATH) >= _ROUTE_MEMORY:
            _ROUTE_OF_PATH.clear()
        _ROUTE_OF_PATH[path] = label
    else:
        label = _ROUTE_OF_PATH.get(path, "unmatched")
    counted = method if method in _METHODS else "OTHER"
    # The response cache's mark, when it is the last header: hit or miss.
    last = response_headers[-1] if response_headers else (b"", b"")
    cached = last[1] if last[0] == b"x-cache" else None
    _tally.request(counted, label, status, cached, duration)
    if label.startswith("/api/"):
        _count_outcome(method, status, response_headers)
    _access_log(method, path, status, duration, request_id)


async def _flush_all() -> None:
    _tally.flush()
    _flush_lines()


# The ingest API's answers, read off the response so every route and middleware is counted
# without each of them importing the metrics.
_INGEST_ACTIONS = {
    ("POST", 201): "created",
    ("POST", 200): "unchanged",
    ("PUT", 200): "updated",
    ("DELETE", 204): "deleted",
}


def _count_outcome(method: str, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    found = dict(headers)
    replayed = found.get(b"idempotent-replayed") == b"true"
    action = _INGEST_ACTIONS.get((method, status))
    if action and not replayed and method in ("POST", "PUT", "DELETE"):
        _tally.count(POSTS_INGESTED, action)
    if status == 401:
        bad = b'error="invalid_token"' in found.get(b"www-authenticate", b"")
        _tally.count(AUTH_FAILURES, "invalid_token" if bad else "missing_token")
    elif status == 429:
        _tally.count(AUTH_FAILURES, "locked_out")


_id_prefix = ""
_id_count = itertools.count()


def _new_request_id() -> str:
    """32 hex digits, unique per worker: a random prefix drawn once, then a counter (a
    `getrandom` system call per request showed in a cached page's profile)."""
    global _id_prefix
    if not _id_prefix:
        _id_prefix = os.urandom(8).hex()
    return f"{_id_prefix}{next(_id_count):016x}"


def _forget_request_id_prefix() -> None:
    global _id_prefix
    _id_prefix = ""


os.register_at_fork(after_in_child=_forget_request_id_prefix)  # a forked worker draws its own


async def metrics_response(_: Request) -> Response:
    # On the event loop, like every other use of the tally (it takes no lock): this worker's
    # counts are current, the other workers' at most a second old.
    _tally.flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest()
    return Response(body, media_type=CONTENT_TYPE_LATEST)
