"""How `workshop serve` speaks HTTP: uvicorn's httptools protocol, sending each answer in one go.

uvicorn writes a response's status line and headers as soon as the app starts the response, and
its body when the app sends it: two `send` system calls per answer. Over a socket every send does
the network stack's work for its segment, so for a cached page the second call cost about as
much as everything the worker does in Python (py-spy: the two writes were a third of a popular
essay's samples). nginx sends both in one call. Here a connection's writes are held until the
step of the event loop that made them ends, then sent together (`writelines`: one `writev`):
headers and body of an answer leave in one segment, and nothing waits longer than one turn of
the loop. Bare ASGI callable, 2 workers, `wrk -t2 -c32`: 44,000 -> 56,500 requests/s.

The front door (`OneSendHttpProtocol`): a GET or HEAD that memory can answer (a stored essay
page, a response-cache hit) is answered as soon as its headers are parsed, with the bytes the
app would have sent through ASGI. Building the ASGI request (scope, task, messages through three
wrappers) was most of what a cached page still cost: popular essay, SQLite, 2 workers, the two
builds side by side: 21.9-29.7k -> 30.1-36.2k requests/s, 49-65 -> 37-46 us of a worker each.
A stored page that must be read from PostgreSQL first (one the worker does not keep) is awaited
at the front door too, with uvicorn's pipeline holding the requests behind it: random essays of
1,000, 2 workers: 92-94 -> 76-80 us of the workers' CPU each, 12.3-12.7k -> 13.8-14.0k
requests/s.

What uvicorn's protocol still did for every request that the front door does not need: it built
the ASGI scope (a dict of nine entries and a copy of the app's state) as each request began, and
armed a keep-alive timer after each answer that the next read cancelled. The scope is now built
only when the ASGI way answers (`_scope`), and one timer per idle spell closes an idle connection
(`on_response_complete`). A stored essay's 304 in-process, no sockets: 13.0 -> 10.5 us; 2
workers, `wrk -t2 -c32`: popular essay 53-57k -> 61-62k requests/s, its 304 58-62k -> 65-67k.

Repeats (`Repeats`): a client sends the same header lines with every request, and only its
request line changes. The header lines of a request the front door took, read whole and alone,
are kept by their bytes with what the parse read from them; a head read between requests whose
line is plain (`_REQUEST_LINE`) and whose header lines are known is not parsed: the front door
is asked the question they give, and answers it afresh. An answer to await, or none, is left to
the parse of those bytes after all. A 304 of `/` in process: 10.0-10.2 -> 8.0-8.5 us; 2 workers,
SQLite, 1,000 essays, `wrk -t2 -c32`, three runs of each build alternating: `/`'s 304
82.1-82.9k -> 93.2-99.0k requests/s, `/feed.xml`'s 81.2-88.0k -> 89.2-116.1k. Keyed first by a
head's whole bytes, the table held a crawler's requests of 1,000 essays and not of 100,000
(py-spy: 49% of a worker's samples answered unparsed at 1,000, 2% at 100,000); keyed by the
header lines, a crawler's every request after its first is read here at any size: PostgreSQL,
the crawler's p99 side by side 5.58 -> 7.66 ms (1.37x) before, 5.54 -> 6.64 ms (1.20x) after.
"""

import asyncio
import re
from collections.abc import Callable, Coroutine
from typing import Any

from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

# What `workshop serve` passes to uvicorn (a string: the workers import it).
PROTOCOL = "app.serving:OneSendHttpProtocol"


class HeldWrites:
    """A transport whose writes wait for the end of the current loop step, then go out together.

    Everything but writing and closing is the real transport's. Closing sends what is held
    first; what is held when the peer has gone is dropped, as the transport itself drops it.
    """

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._held is None:
            self._held = [data]
            self._loop.call_soon(self._send)
        else:
            self._held.append(data)

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def _send(self) -> None:
        held, self._held = self._held, None
        if not held or self._transport.is_closing():
            return
        if len(held) == 1:
            self._transport.write(held[0])
        else:
            self._transport.writelines(held)

    def close(self) -> None:
        self._send()
        self._transport.close()

    # Called on every request by uvicorn: spelled out rather than found through __getattr__.
    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


_NOT_TOLD: Any = object()


class Repeats:
    """Header lines of request heads the front door took, by their exact bytes: what the
    parse read from them.

    A client sends the same header lines with every request (a crawler, a feed reader polling
    with its ETag, a load generator, a reader's browser); only the request line changes.
    `get` reads the request line itself, strictly (`_REQUEST_LINE`: GET or HEAD, an
    origin-form target of plain characters, HTTP/1.1, single spaces), and looks up the bytes
    after it; if they are known, the head asks the question that line and those header lines
    give, and `OneSendHttpProtocol.data_received` asks the front door straight away, without
    parsing. The answer is the front door's own, made afresh each time (at the current
    version, with a new request id, counted and logged).

    Why that is the parse's reading: the bytes after a line are kept (`note`) only from a head
    that was read whole and alone, with nothing after its blank line (no body, no trailers),
    whose own line `_REQUEST_LINE` reads, and which the front door took. llhttp reads the
    header lines after such a line the same way whatever its method (GET or HEAD) and target,
    so the same bytes after another such line are the same header lines, and the message ends
    at the same byte, the last. A head with any other line (another method or version, a
    percent sign, a fragment, two spaces) is parsed, as is any head whose rest is not known.

    Bounded: a head over `max_head` bytes or `max_fields` header lines is not kept, and the
    table is emptied once what it holds passes `max_bytes` (`_size`: the bytes and their
    parsed copy).
    """

    def __init__(
        self, max_bytes: int = 8 << 20, max_head: int = 2048, max_fields: int = 40
    ) -> None:
        self.max_bytes, self.max_head, self.max_fields = max_bytes, max_head, max_fields
        self.bytes = 0
        self._headers: dict[bytes, list[tuple[bytes, bytes]]] = {}

    def get(self, data: bytes) -> "Asked | None":
        """The question `data` asks, if it is a plain request line and a known rest."""
        end = data.find(b"\r\n")
        if end < 0:
            return None
        headers = self._headers.get(data[end + 2 :])
        if headers is None:
            return None
        line = _REQUEST_LINE.fullmatch(data, 0, end)
        if line is None:
            return None
        method, path, query = line.groups()
        return _FRONT_METHODS[method], path.decode("ascii"), query or b"", headers

    def note(self, data: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """Keep the header lines of `data`, a message read whole and alone that the front door
        took, if it is a plain request line and a head with nothing after it: `headers` is what
        the parse read from them (copied: the list the parse made goes on to the ASGI way)."""
        if len(data) > self.max_head or len(headers) > self.max_fields:
            return
        end = data.find(b"\r\n")
        if end < 0 or data.find(b"\r\n\r\n") != len(data) - 4:  # a body, or trailers
            return
        rest = data[end + 2 :]
        if rest in self._headers or _REQUEST_LINE.fullmatch(data, 0, end) is None:
            return
        size = _size(rest, len(headers))
        if self.bytes + size > self.max_bytes:
            self._headers.clear()
            self.bytes = 0
        self._headers[rest] = list(headers)
        self.bytes += size


# A request line `Repeats` reads itself: GET or HEAD, an origin-form target of unreserved
# characters, sub-delimiters, ":", "@" and "/" (a query may hold "?" too; no "%", "#", space or
# control character), HTTP/1.1. A subset of what llhttp accepts, read as it reads it: the method,
# the path and the query as `_split_target` splits the target.
_PLAIN = rb"A-Za-z0-9\-._~!$&'()*+,;=:@/"
_REQUEST_LINE = re.compile(rb"(GET|HEAD) (/[%s]*)(?:\?([%s?]*))? HTTP/1\.1" % (_PLAIN, _PLAIN))


def _size(rest: bytes, fields: int) -> int:
    """At least what a kept rest costs in memory: its bytes twice (the key, and the header
    names and values parsed from it); per header line a tuple of two bytes objects and the
    list's slot for it (`sys.getsizeof`: 130 bytes beyond their contents, taken as 170); the
    key's object, the list and the table's slot (about 250, taken as 400)."""
    return 2 * len(rest) + 170 * fields + 400


class OneSendHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through `HeldWrites`, with a front door.

    The front door: when a GET or HEAD has been read up to its headers, the app's `front_door`
    (`Workshop.front_door`) is asked for an answer it can give from memory or one local read (a
    stored essay page, a response-cache hit). If it has one, the answer is written here, in the
    parser's callback: no ASGI scope, task, or messages, which were most of a cached page's cost
    (py-spy). If only a read on the event loop can tell (`Reading`), a task awaits it and
    writes the answer, or starts the ASGI request after all. Anything else, and any request
    the front door does not take (not keep-alive, HTTP/1.0, Expect, a percent-encoded path,
    an answer still being written before it, a client not reading), goes the ASGI way as
    before. So does a request whose asking raised (a bug: the stored pages and the cache turn
    a database's failure into "ask the route"), once its traceback is logged under the id the
    ASGI way then answers with; if that way raises too, the request log logs it and the reader
    gets the site's error page (app/observability.py).
    """

    _front: "FrontDoor | None" = None
    _answered = False  # the message being parsed was answered at the front door
    _mid_message = False  # a message has begun and not yet ended
    _begun = 0  # messages begun in the bytes being fed to the parser
    _asked: "Asked | None" = None  # what the front door took from the bytes being fed
    _told: Any = _NOT_TOLD  # the front door's answer to a repeat, for the parse to use
    _last_message = False  # a message ended the connection: the parser reads no more

    def data_received(self, data: bytes) -> None:
        """A request head with a plain request line and header lines this worker's front door
        took before, byte for byte, is answered without parsing it (`Repeats`); anything else
        is parsed, and the header lines of a lone request the front door took are noted for
        next time."""
        if self._front is None:
            super().data_received(data)
            return
        idle = not self._mid_message and not self._last_message  # between requests
        if idle and len(data) <= REPEATS.max_head:
            asked = REPEATS.get(data)
            if asked is not None and self._answer_repeat(asked, data):
                return
        self._begun, self._asked = 0, None
        super().data_received(data)
        if idle and self._begun == 1 and not self._mid_message and self._asked is not None:
            REPEATS.note(data, self._asked[3])

    def _answer_repeat(self, asked: "Asked", data: bytes) -> bool:
        """Answer `data`, a request head `Repeats` read (`asked`), as the parse would: the
        same question to the front door. An answer to await, or none, is left to the parse
        of `data`, which then uses what the front door told rather than asking again."""
        if not self._may_answer_here():
            return False
        method, path, query, headers = asked
        try:
            found: Any = self._front(method, path, query, headers)  # type: ignore[misc]
        except Exception as exc:  # raised again in the parse, which logs it
            found = exc
        if not isinstance(found, tuple):
            self._told = found  # the parse of the same bytes reaches `_answer_here`, and takes it
            try:
                self._begun, self._asked = 0, None
                super().data_received(data)
            finally:
                self._told = _NOT_TOLD
            return True
        self._idle_since = None  # as a read does
        try:
            self._write_answer(found)
            self.on_response_complete()
        except Exception:  # as the parse's callbacks would fail: httptools' error, uvicorn's 400
            self.logger.exception("Exception answering a repeated request")
            self.send_400_response("Invalid HTTP request received.")
        return True

    def _may_answer_here(self) -> bool:
        cycle = self.cycle
        return not (
            (cycle is not None and not cycle.response_complete)  # answers go out in order
            or self.pipeline
            or self.flow.write_paused  # the client is not reading: ASGI waits for it
            or self.expect_100_continue
            or self.root_path
        )

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        held: Any = HeldWrites(transport, self.loop)
        super().connection_made(held)
        self._front = _front_door_of(self.app)

    def on_message_begin(self) -> None:
        # uvicorn's, but the ASGI scope is built only when the ASGI way needs it (`_scope`):
        # a request answered at the front door never reads it.
        self._answered = False
        self._mid_message = True
        self._begun += 1
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = None  # type: ignore[assignment]

    def _scope(self) -> Any:
        """The scope uvicorn's `on_message_begin` builds (made by it, so it stays uvicorn's),
        for the request being parsed: what that method also resets is put back."""
        if self.scope is None:
            url, headers, expect = self.url, self.headers, self.expect_100_continue
            super().on_message_begin()
            self.url, self.headers, self.expect_100_continue = url, headers, expect
            self.scope["headers"] = headers
        return self.scope

    def on_headers_complete(self) -> None:
        if self._front is not None and self._answer_here(self._front):
            self._answered = True
            return
        # An answer given here just before, in the same read, left the connection idle: it
        # must not be closed for idleness under this request.
        self._unset_keepalive_if_required()
        self._scope()
        super().on_headers_complete()

    # The keep-alive timeout, armed lazily. uvicorn arms a timer after every answer and cancels
    # it on every read: a timer made and dropped per request, about a tenth of a cached page's
    # cost. Here the connection notes when it went idle; one timer per connection, armed after
    # an answer if none is pending, closes it when it has been idle `timeout_keep_alive`
    # seconds, or looks again when that time would come.
    _idle_since: float | None = None  # when the last answer left with nothing behind it

    def _unset_keepalive_if_required(self) -> None:
        self._idle_since = None  # data arrived, a request is under way: not idle

    def on_response_complete(self) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle_since = None
        self.flow.resume_reading()  # unpause data reads, if paused
        if self.pipeline:  # start the next pipelined request
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = now = self.loop.time()
        if self.timeout_keep_alive_task is None:
            due = now + self.timeout_keep_alive
            self.timeout_keep_alive_task = self.loop.call_at(due, self._keep_alive_due)

    def _keep_alive_due(self) -> None:
        self.timeout_keep_alive_task = None
        if self._idle_since is None:  # busy: the next answer arms the timer again
            return
        due = self._idle_since + self.timeout_keep_alive
        if self.loop.time() >= due:
            self.timeout_keep_alive_handler()
        else:
            self.timeout_keep_alive_task = self.loop.call_at(due, self._keep_alive_due)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._idle_since = None
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None

    def on_body(self, body: bytes) -> None:
        if not self._answered:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._mid_message = False
        # `Connection: close` in a chunked request's trailers, say: llhttp then drops what
        # follows on this connection, so no repeat may be answered after it either.
        self._last_message = not self.parser.should_keep_alive()
        if not self._answered:
            super().on_message_complete()

    def _answer_here(self, front: "FrontDoor") -> bool:
        parser = self.parser
        if not self._may_answer_here():
            return False
        method = parser.get_method()
        if method not in _FRONT_METHODS or parser.get_http_version() != "1.1":
            return False
        if not parser.should_keep_alive() or parser.should_upgrade():
            return False
        raw_path, query = _split_target(self.url)
        if raw_path is None or b"%" in raw_path:
            return False
        path = raw_path.decode("ascii")
        asked = (_FRONT_METHODS[method], path, query, self.headers)
        try:
            if self._told is not _NOT_TOLD:  # a repeat: the front door was asked already
                found, self._told = self._told, _NOT_TOLD
                if isinstance(found, Exception):
                    raise found
            else:
                found = front(*asked)
        except Exception as exc:  # the ASGI way answers it
            self._front_door_failed(exc, self._scope(), method, path)
            return False
        if found is None:
            return False
        if not isinstance(found, tuple):  # a read on the event loop tells: await it
            # The scope as uvicorn completes it, should the ASGI way answer after all.
            scope = self._scope()
            scope["method"], scope["path"] = method.decode(), path
            scope["raw_path"], scope["query_string"] = raw_path, query
            self._await_answer(found, method, path)
            self._asked = asked
            return True
        self._write_answer(found)
        self.on_response_complete()  # counts it, arms the keep-alive timer
        self._asked = asked
        return True

    def _front_door_failed(self, exc: Exception, scope: Any, method: bytes, path: str) -> None:
        """Log what went wrong at the front door, with the id the request's answer will carry:
        the ASGI way, which answers it instead, is handed that id in the request's scope. (If
        the ASGI way fails too, its error is logged under the same id.)"""
        # Imported here: app.observability makes the Prometheus metrics, which must be made
        # after `workshop serve` has pointed them at its folder (PROMETHEUS_MULTIPROC_DIR), and
        # `workshop serve` imports this module before it does.
        from app.observability import REQUEST_ID, log_error, request_id_of

        request_id, _ = request_id_of(self.headers)
        scope[REQUEST_ID] = request_id
        log_error(exc, "answered the ASGI way", method.decode(), path, request_id)

    def _write_answer(self, answer: "Answer") -> None:
        status, headers, body = answer
        content = [STATUS_LINE[status], _lines_of(self.server_state.default_headers)]
        for name, value in headers:
            content += (name, b": ", value, b"\r\n")
        content.append(b"\r\n")
        self.transport.writelines((b"".join(content), body))  # one writev; the body uncopied

    def _await_answer(self, reading: "Reading", method: bytes, path: str) -> None:
        """Answer when `reading` tells: meanwhile `Awaited` stands in for uvicorn's cycle, so
        requests behind it wait in uvicorn's pipeline, and connection loss or shutdown is
        noted on it as on a cycle. If the reading gives no answer (or fails), the request
        goes the ASGI way after all, with the scope uvicorn built for it."""
        awaited = Awaited(self.scope)
        self.cycle = awaited  # type: ignore[assignment]  # as uvicorn's protocol uses a cycle
        task = self.loop.create_task(self._answer_awaited(awaited, reading, method, path))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _answer_awaited(
        self, awaited: "Awaited", reading: "Reading", method: bytes, path: str
    ) -> None:
        try:
            answer = await reading
        except Exception as exc:  # the ASGI way answers it
            self._front_door_failed(exc, awaited.scope, method, path)
            answer = None
        if awaited.disconnected:  # nobody to answer
            awaited.response_complete = True
            return
        if answer is None:
            self._asgi_after_all(awaited)
            return
        awaited.response_complete = True
        self._write_answer(answer)
        if not awaited.keep_alive:  # the server is shutting down: as uvicorn's cycle does
            self.transport.close()
        self.on_response_complete()

    def _asgi_after_all(self, awaited: "Awaited") -> None:
        """Start the ASGI request that `awaited` stood in for (uvicorn's own cycle)."""
        cycle = RequestResponseCycle(
            scope=awaited.scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=awaited.keep_alive,
            on_response=self.on_response_complete,
        )
        cycle.more_body = False  # a GET or HEAD, its body (if any) read and dropped
        cycle.message_event.set()  # the request is all read
        if self.cycle is awaited:  # no request behind it yet: this is the connection's cycle
            self.cycle = cycle
        awaited.response_complete = True
        self._start_asgi_task(cycle, self.app)


_lines_made: tuple[list[tuple[bytes, bytes]], bytes] = ([], b"")


def _lines_of(default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """uvicorn's default headers (the date, made anew each second) as header lines, made once
    per list."""
    global _lines_made
    if _lines_made[0] is not default_headers:
        lines = b"".join(name + b": " + value + b"\r\n" for name, value in default_headers)
        _lines_made = (default_headers, lines)
    return _lines_made[1]


def _split_target(target: bytes) -> tuple[bytes | None, bytes]:
    """The path and query of an origin-form request target (`/path?query`), as
    `httptools.parse_url` gives them; (None, b"") for any other form (absolute URL, `*`), or
    one with a fragment, which the front door leaves to uvicorn."""
    if target[:1] != b"/" or b"#" in target:
        return None, b""
    path, _, query = target.partition(b"?")
    return path, query


class _NoMessages:
    def set(self) -> None:
        pass


class Awaited:
    """What uvicorn's protocol sees as the current cycle while the front door awaits an answer
    (the attributes it reads and sets on one)."""

    __slots__ = ("scope", "response_complete", "keep_alive", "disconnected")
    message_event = _NoMessages()  # set on connection loss; no ASGI app waits on it

    def __init__(self, scope: Any) -> None:
        self.scope = scope
        self.response_complete = False
        self.keep_alive = True
        self.disconnected = False


# Method bytes as the parser gives them -> the name the app is asked with.
_FRONT_METHODS = {b"GET": "GET", b"HEAD": "HEAD"}

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, headers, body
Asked = tuple[str, str, bytes, list[tuple[bytes, bytes]]]  # method, path, query, headers
Reading = Coroutine[Any, Any, Answer | None]  # an answer to await (None: the ASGI way)
# `Workshop.front_door`: (method, path, query, headers) -> an answer, one to await, or None.
FrontDoor = Callable[[str, str, bytes, list[tuple[bytes, bytes]]], Answer | Reading | None]


REPEATS = Repeats()  # this worker's


def _front_door_of(app: Any) -> FrontDoor | None:
    """The app's `front_door`, found through the middleware uvicorn may wrap it in."""
    for _ in range(4):
        front = getattr(type(app), "front_door", None)
        if front is not None:
            return front.__get__(app)
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None
