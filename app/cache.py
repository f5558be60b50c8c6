"""A response cache answered before routing, keyed by the content version every write bumps.

Pure ASGI middleware: a hit costs a read of the content version (bumped in the same transaction
as every write, by any worker; see `VersionReader`) plus two `send` calls, so pages stay fresh
across workers and hosts without any invalidation message. A miss runs the app and keeps a copy
of a cacheable answer in a bounded per-worker LRU.
"""

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

from sqlalchemy import Engine

from app import beacon, db, etags, watch
from app.asgi import at_shutdown, at_startup
from app.observability import REQUEST_ID
from app.pgshared import SharedReads, Wire
from app.routes.conditional import gzip_acceptable

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

VERSION_SQL = watch.VERSION_SQL  # the content version, read raw (sqlite3, libpq)
CACHEABLE_STATUS = frozenset({200, 301, 404, 410})
# Operator endpoints must answer live; static files and the API docs have their own caching.
BYPASS_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json"})
BYPASS_PREFIXES = ("/static/", "/docs/")
# Headers that make an answer personal: such requests are never served from or stored in the cache.
PRIVATE_REQUEST_HEADERS = frozenset({b"authorization", b"cookie"})
# What a 304 repeats from the full answer (RFC 9110 section 15.4.5).
NOT_MODIFIED_HEADERS = frozenset(
    {b"etag", b"cache-control", b"last-modified", b"vary", b"content-location", b"expires"}
)
# Taken off a HEAD or conditional miss, which is answered from the full GET answer it stores.
CONDITIONAL_HEADERS = frozenset({b"if-none-match", b"if-modified-since"})
HIT = (b"x-cache", b"hit")
MISS = (b"x-cache", b"miss")

Key = tuple[bytes, str, bytes, bool, bool, int]
# Host, gzip accepted, HTML accepted, If-None-Match, If-Modified-Since.
Asked = tuple[bytes, bool, bool, bytes | None, bytes | None]
# An answer ready to send: status, headers, body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


# Where the app says, in the request's scope, when a stored copy of its answer must be made
# again though the content version is the same (`refresh_at`).
_REFRESH_AT = "workshop.cache_refresh_at"


def refresh_at(scope: Scope, when: float) -> None:
    """Tell the response cache to keep this answer only until `when` (a `time.time()`): a feed
    answered right after a write goes without `Last-Modified` for a second or two
    (`freshness.ContentState.last_modified`), and its copy would otherwise go without it for
    as long as the version lasts."""
    scope.setdefault("state", {})[_REFRESH_AT] = when


@dataclass(frozen=True, slots=True)
class Entry:
    status: int
    headers: list[tuple[bytes, bytes]]  # as the app sent them, then X-Cache: hit
    body: bytes
    etag: bytes | None
    last_modified: bytes | None
    not_modified_headers: list[tuple[bytes, bytes]]  # what a 304 repeats, then X-Cache: hit
    refresh_at: float | None = None  # made again from then on (`refresh_at` above)
    size: int = field(init=False, default=0)  # bytes it holds, about: counted once

    def __post_init__(self) -> None:
        size = len(self.body) + sum(len(k) + len(v) for k, v in self.headers) + 200
        object.__setattr__(self, "size", size)  # frozen: set once, here


class LRU:
    """Least recently used entries go first when either bound (entries or bytes) is passed."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._data: OrderedDict[Key, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Key) -> Entry | None:
        entry = self._data.get(key)
        if entry is not None:
            self._data.move_to_end(key)
        return entry

    def put(self, key: Key, entry: Entry) -> None:
        old = self._data.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        self._data[key] = entry
        self.bytes += entry.size
        while self._data and (len(self._data) > self.max_entries or self.bytes > self.max_bytes):
            _, evicted = self._data.popitem(last=False)
            self.bytes -= evicted.size


class VersionReader:
    """Reads the content version; every read sees the latest acknowledged write.

    SQLite file: the shared-memory beacon beside the database (`app/beacon.py`), compared with
    the database itself every `beacon.RECHECK_SECONDS`. Other SQLite databases: a dedicated
    autocommit connection queried inline (WAL readers never wait for writers). PostgreSQL: the
    version the worker's watcher heard of through NOTIFY, while it holds its lease (every write
    waits until every such worker heard of it: `app/watch.py`).

    Otherwise, on PostgreSQL, the version is read on a dedicated autocommit async connection,
    kept out of the app's pool, so the event loop keeps serving while the query is on the wire.
    Those reads are shared (`app/pgshared.py`): requests that arrive while a query is on the
    wire wait for the next query, which starts after they arrived, so it sees every write
    acknowledged before them; one round trip answers all of them.
    """

    def __init__(self, engine: Engine, use_watcher: bool = True) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self.use_watcher = use_watcher  # False: always the shared query (tests of it)
        self._process = -1  # the `db.forks` count it set up for: none yet
        self._beacon: beacon.Beacon | None = None
        self._recheck_at = 0.0
        self._pg = None if self.is_sqlite else SharedReads(engine, _fetch_version)

    def start(self) -> None:
        """At the worker's start: on PostgreSQL, start the watcher, so that it is trusted by the
        first requests (started at the first request, it made them read the version from the
        database until it was). `/` in the first 2 s after a restart, 10 restarts each: p99
        21-35 ms (median 29.5) -> 16-35 ms (median 20.6)."""
        if self._pg is not None and self.use_watcher:
            watch.for_engine(self.engine)

    def read_now(self) -> int | None:
        """The version, if it can be told without waiting: the SQLite beacon or file, the
        PostgreSQL watcher while it is trusted. None: only a query on the wire can tell."""
        if self._process != db.forks:  # first read, or a forked worker maps it again
            self._process = db.forks
            self._beacon, self._recheck_at = beacon.for_engine(self.engine), 0.0
        if self._beacon is not None:
            if time.monotonic() < self._recheck_at:
                return self._beacon.read()
            version = self._beacon.reconcile(self._read_sqlite)
            self._recheck_at = time.monotonic() + beacon.RECHECK_SECONDS
            return version
        if self._pg is None:
            return self._read_sqlite()
        if self.use_watcher:
            watcher = watch.for_engine(self.engine)
            if watcher.trusted:  # it heard of every acknowledged write (app/watch.py)
                return watcher.version
        return None

    async def read(self) -> int:
        version = self.read_now()
        if version is not None:
            return version
        assert self._pg is not None  # SQLite always knows now
        return await self._pg.get(None) or 0

    def _read_sqlite(self) -> int:
        try:
            row = db.sqlite_reader(self.engine).execute(VERSION_SQL).fetchone()
        except Exception:
            db.forget_sqlite_reader(self.engine)
            raise
        return int(row[0]) if row else 0

    async def close(self) -> None:
        if self._pg is None:
            db.forget_sqlite_reader(self.engine)
        else:
            await self._pg.close()
            if self.use_watcher:
                await watch.close(self.engine)


async def _fetch_version(wire: Wire, _keys: list[None]) -> dict[None, int]:
    rows = await wire.query(VERSION_SQL)
    return {None: int(rows[0][0] or 0) if rows else 0}


class ResponseCache:
    """ASGI middleware: serve GET/HEAD of public pages from memory while content is unchanged."""

    def __init__(
        self,
        app: ASGIApp,
        engine: Engine,
        max_entries: int = 1000,
        max_bytes: int = 16 * 1024 * 1024,
        max_entry_bytes: int = 1024 * 1024,
    ) -> None:
        self.app = app
        self.versions = VersionReader(engine)
        self.store = LRU(max_entries, max_bytes)
        self._filling: dict[Key, asyncio.Event] = {}  # misses being rendered right now
        self.max_entry_bytes = max_entry_bytes
        self._warned = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            receive = at_startup(receive, self.versions.start)
            await self.app(scope, at_shutdown(receive, self.versions.close), send)
            return
        if (
            scope["type"] != "http"
            or scope["method"] not in ("GET", "HEAD")
            or _bypassed(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        asked = _asked(scope["headers"])
        if asked is None:  # a personal request
            await self.app(scope, receive, send)
            return
        try:
            version = await self.versions.read()
        except Exception:  # no version, no cache: the app answers (and reports the database)
            if not self._warned:
                _warn_bypassed(scope)
                self._warned = True
            await self.app(scope, receive, send)
            return
        host, gzip, html, if_none_match, if_modified_since = asked
        key: Key = (host, scope["path"], scope["query_string"], gzip, html, version)

        entry = _current(self.store.get(key))
        filling = self._filling.get(key) if entry is None else None
        if filling is not None:
            # Another request is rendering this very answer: wait for it rather than render it
            # again. Without this, 32 clients arriving together at an expensive page (a search
            # for a common word, a sitemap) rendered it 32 times at once and the worker stalled.
            await filling.wait()
            entry = self.store.get(key)
        head = scope["method"] == "HEAD"
        if entry is not None:
            await self._answer(entry, head, if_none_match, if_modified_since, send)
        elif head or if_none_match or if_modified_since:
            await self._fill_then_answer(
                key, scope, receive, send, if_none_match, if_modified_since
            )
        else:
            await self._fill(key, scope, receive, send)

    def answer_now(
        self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]]
    ) -> Answer | None:
        """The stored answer to this request, if it can be told without waiting; None: ask
        through ASGI (`__call__`). The server's front door (`app/serving.py`) asks this before
        it builds any ASGI request, so a hit costs no task, scope or messages."""
        if method not in ("GET", "HEAD") or _bypassed(path):
            return None
        asked = _asked(headers)
        if asked is None:
            return None
        try:
            version = self.versions.read_now()
        except Exception:  # the ASGI path warns once and lets the app report the database
            return None
        if version is None:
            return None
        host, gzip, html, if_none_match, if_modified_since = asked
        entry = self.store.get((host, path, query, gzip, html, version))
        if entry is None or (entry.refresh_at is not None and entry.refresh_at <= time.time()):
            return None  # (`_current`, inline: the front door's hot path)
        return _reply(entry, method == "HEAD", if_none_match, if_modified_since)

    async def _answer(
        self,
        entry: Entry,
        head: bool,
        if_none_match: bytes | None,
        if_modified_since: bytes | None,
        send: Send,
        miss: bool = False,
    ) -> None:
        status, headers, body = _reply(entry, head, if_none_match, if_modified_since)
        if miss:  # the last header is X-Cache
            headers = [*headers[:-1], MISS]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _fill_then_answer(
        self,
        key: Key,
        scope: Scope,
        receive: Receive,
        send: Send,
        if_none_match: bytes | None,
        if_modified_since: bytes | None,
    ) -> None:
        """A HEAD or conditional miss: store the full GET answer, then answer from it.

        Feed readers and crawlers mostly send conditional requests, so a worker whose cache
        stored only plain GETs answered most of them through the app (a 304 of `/` at 0.02 of
        nginx on a worker that no plain GET had reached). An answer that cannot be stored goes
        to the app again, as the request came.
        """
        get = {
            **scope,
            "method": "GET",
            "headers": [(n, v) for n, v in scope["headers"] if n not in CONDITIONAL_HEADERS],
        }
        await self._fill(key, get, receive, _discard)
        entry = self.store.get(key)
        if entry is None:
            await self.app(scope, receive, _tagged(send))
        else:
            head = scope["method"] == "HEAD"
            await self._answer(entry, head, if_none_match, if_modified_since, send, miss=True)

    async def _fill(self, key: Key, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app, passing every message straight on while keeping a copy to store."""
        start: Message | None = None
        chunks: list[bytes] = []
        size = 0
        keep = True

        async def capture(message: Message) -> None:
            nonlocal start, size, keep
            if message["type"] == "http.response.start":
                start = message
                keep = message["status"] in CACHEABLE_STATUS and _storable(message["headers"])
                message = {**message, "headers": [*message["headers"], MISS]}
            elif message["type"] == "http.response.body" and keep:
                body = message.get("body", b"")
                size += len(body)
                if size > self.max_entry_bytes:
                    keep, chunks[:] = False, []
                else:
                    chunks.append(body)
                if keep and not message.get("more_body", False) and start is not None:
                    self._store(key, start, b"".join(chunks), scope.get("state", {}))
            await send(message)

        self._filling[key] = filled = asyncio.Event()
        try:
            await self.app(scope, receive, capture)
        finally:
            if self._filling.get(key) is filled:
                del self._filling[key]
            filled.set()  # waiters find the stored entry, or (not cacheable) ask the app

    def _store(self, key: Key, start: Message, body: bytes, state: dict[str, Any]) -> None:
        headers = [(k.lower(), v) for k, v in start["headers"]]
        found = dict(headers)
        if b"content-length" not in found and start["status"] not in (204, 304):
            # A streamed answer (a sitemap) came chunked: its copy is sent whole, with a length.
            headers.append((b"content-length", b"%d" % len(body)))
        etag, last_modified = found.get(b"etag"), found.get(b"last-modified")
        not_modified = [(k, v) for k, v in headers if k in NOT_MODIFIED_HEADERS]
        entry = Entry(
            start["status"],
            [*headers, HIT],
            body,
            etag,
            last_modified,
            [*not_modified, HIT],
            state.get(_REFRESH_AT),
        )
        self.store.put(key, entry)


def _asked(headers: list[tuple[bytes, bytes]]) -> Asked | None:
    """What the cache reads off a request's headers; None for a personal request."""
    host = b""
    html = False
    encodings = if_none_match = if_modified_since = None
    for name, value in headers:
        if name in PRIVATE_REQUEST_HEADERS:
            return None
        if name == b"host":
            host = value
        elif name == b"accept-encoding":  # several field lines are one list (RFC 9110 5.3)
            encodings = value if encodings is None else encodings + b"," + value
        elif name == b"accept":
            html = b"text/html" in value  # error pages are HTML for browsers, JSON otherwise
        elif name == b"if-none-match":
            if_none_match = value
        elif name == b"if-modified-since":
            if_modified_since = value
    # The gzip layer's own decision, so an entry holds the representation its key names.
    gzip = encodings is not None and gzip_acceptable(encodings)
    return host, gzip, html, if_none_match, if_modified_since


def _current(entry: Entry | None) -> Entry | None:
    """The entry, unless the app asked for it to be made again by now (`refresh_at`)."""
    if entry is not None and entry.refresh_at is not None and entry.refresh_at <= time.time():
        return None
    return entry


def _reply(
    entry: Entry, head: bool, if_none_match: bytes | None, if_modified_since: bytes | None
) -> Answer:
    """Status, headers and body of the answer from a stored entry (a 304 when the client's
    copy is current). Header lists are built once, when the entry is stored."""
    if entry.status == 200 and _not_modified(entry, if_none_match, if_modified_since):
        return 304, entry.not_modified_headers, b""
    return entry.status, entry.headers, b"" if head else entry.body


def _bypassed(path: str) -> bool:
    return path in BYPASS_PATHS or path.startswith(BYPASS_PREFIXES)


def _storable(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        name = name.lower()
        if name == b"set-cookie":
            return False
        if name == b"cache-control" and (b"no-store" in value or b"private" in value):
            return False
        if name == b"vary" and value.strip() == b"*":
            return False
    return True


def _not_modified(
    entry: Entry, if_none_match: bytes | None, if_modified_since: bytes | None
) -> bool:
    """RFC 9110 section 13.1: If-None-Match (weak comparison) wins over If-Modified-Since."""
    if if_none_match is not None:
        if entry.etag is None:
            return False
        if if_none_match == entry.etag:  # what a client that kept the ETag sends back
            return True
        # As the routes compare: weakened tags, and an API post's gzipped and plain tags, name
        # the same version.
        return etags.matches(if_none_match.decode("latin-1"), entry.etag.decode("latin-1"))
    if if_modified_since is not None and entry.last_modified is not None:
        try:
            since = parsedate_to_datetime(if_modified_since.decode("latin-1"))
            modified = parsedate_to_datetime(entry.last_modified.decode("latin-1"))
            return modified <= since
        except (TypeError, ValueError, OverflowError):  # (a number past a C int: unparseable)
            return False
    return False


async def _discard(_message: Message) -> None:
    pass


def _tagged(send: Send) -> Send:
    async def tagged(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message["headers"], MISS]}
        await send(message)

    return tagged


def _warn_bypassed(scope: Scope) -> None:
    """Warn, with the traceback, that the content version could not be read, under the id of
    the request that found it (set by the request log, which runs before this cache), as the
    error log does: the operator finds it beside that request's own error and access lines."""
    request_id = scope.get(REQUEST_ID) or "-"
    method, path = scope["method"], scope["path"]
    log.warning(
        "response cache bypassed: content version unreadable (request %s)",
        request_id,
        exc_info=True,
        extra={"fields": {"method": method, "path": path, "request_id": request_id}},
    )
