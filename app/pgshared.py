"""PostgreSQL reads made on the event loop and shared by the requests waiting for them.

A hot read (the content version per request, an essay's stored page) costs a network round trip
on PostgreSQL. Made per request, through the thread pool and the engine's connection pool, it
held cache hits to a tenth of nginx's rate and random essays of a 100,000-essay archive to 2%
(threads waiting for connections, overflow connections opened and closed per request).

`SharedReads` keeps one async connection per worker and event loop, outside the engine's pool.
Requests that arrive while a query is on the wire wait for the next one, which starts after they
arrived and fetches every key they asked for in one statement: so each request sees every write
acknowledged before it, as its own query would, and a worker asks once per round trip rather
than once per request. A request that goes away does not cancel the answer others wait for.

The connection is driven straight through libpq (`Wire`): its socket stays registered with the
event loop and statements are prepared once. psycopg's async `execute` registered and removed
the socket per query and cost 80 us of a worker's CPU per query against 45 us this way (py-spy:
the version query was 14% of a PostgreSQL worker answering cache hits).

Each answer is waited for at most the engine's `db_timeout_seconds`; past it the connection is
given up and every request waiting for it gets `DatabaseStalled` (`app/pgwaits.py`).
"""

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

import psycopg
from psycopg import pq
from sqlalchemy import Engine

from app.pgwaits import (
    DEFAULT_TIMEOUT,
    PG_CONNECT_TIMEOUT,
    PG_KEEPALIVES,
    Stall,
    connect_async,
    stall_of,
)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
Row = tuple[bytes | None, ...]  # libpq's text format: every value as bytes, NULL as None


class Wire:
    """One autocommit PostgreSQL connection, driven through libpq from the event loop that
    opened it. One statement at a time (`SharedReads` asks one query after another)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], stall: Stall | None = None) -> None:
        self._conn = conn  # psycopg opened it (and keeps the settings); libpq runs the queries
        self._pg = conn.pgconn
        self._pg.nonblocking = 1
        self._fd = self._pg.socket
        self._loop = asyncio.get_running_loop()
        self._prepared: dict[str, bytes] = {}  # SQL -> name of its prepared statement
        self._waiter: asyncio.Future[None] | None = None
        self._broken: Exception | None = None
        self._stall = stall or Stall(DEFAULT_TIMEOUT)  # how long an answer may take
        # Called with each NOTIFY payload as it arrives, and once if the connection breaks.
        self.on_notify: Callable[[bytes], None] | None = None
        self.on_broken: Callable[[], None] | None = None
        self._loop.add_reader(self._fd, self._on_readable)

    @classmethod
    async def open(cls, engine: Engine, name: str = "workshop") -> "Wire":
        url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        stall = stall_of(engine)
        conn = await connect_async(
            stall,
            url,
            autocommit=True,
            application_name=name,
            connect_timeout=PG_CONNECT_TIMEOUT,
            **PG_KEEPALIVES,
        )
        return cls(conn, stall)

    @property
    def usable(self) -> bool:
        return self._broken is None and not self._conn.closed

    async def query(
        self, sql: str, params: Sequence[bytes | None] = (), binary: bool = False
    ) -> list[Row]:
        """The rows of `sql` (placeholders $1, $2...) with these parameters (in text format), in
        text format or, with `binary`, in PostgreSQL's binary format (bytea as its bytes)."""
        self._stall.check()  # while the server answers nothing, fail at once (nothing sent)
        name = self._prepared.get(sql)
        if name is None:
            name = b"w%d" % len(self._prepared)
            self._pg.send_prepare(name, sql.encode())
            await self._result(pq.ExecStatus.COMMAND_OK)
            self._prepared[sql] = name
        self._pg.send_query_prepared(name, list(params) or None, result_format=int(binary))
        result = await self._result(pq.ExecStatus.TUPLES_OK)
        columns = range(result.nfields)
        return [tuple(result.get_value(r, c) for c in columns) for r in range(result.ntuples)]

    async def command(self, sql: str) -> None:
        """Run a statement that returns no rows (`LISTEN channel`), unprepared."""
        self._stall.check()
        self._pg.send_query(sql.encode())
        await self._result(pq.ExecStatus.COMMAND_OK)

    def close(self) -> None:
        self.on_notify = self.on_broken = None
        if self._broken is None:
            self._loop.remove_reader(self._fd)
            self._broken = psycopg.OperationalError("connection closed")
        self._pg.finish()  # what psycopg's close() does; it sees the connection closed

    async def _result(self, expected: pq.ExecStatus) -> pq.abc.PGresult:
        started = time.monotonic()
        timer = self._loop.call_later(self._stall.timeout, self._time_out, started)
        try:
            while self._pg.flush():  # 1: the statement is not all sent yet
                await self._writable()
            found = error = None
            while True:
                while self._pg.is_busy():
                    await self._readable()
                result = self._pg.get_result()
                if result is None:  # the statement's results are all read
                    break
                if result.status == expected:
                    found = result
                else:
                    message = result.error_message.decode("utf-8", "replace").strip()
                    error = psycopg.DatabaseError(message or f"unexpected status {result.status}")
        finally:
            timer.cancel()
        self._stall.answered()
        if error is not None or found is None:
            raise error or psycopg.DatabaseError("no result")
        return found

    def _time_out(self, started: float) -> None:
        """The answer took longer than the bound: the connection is given up (half read)."""
        self._stall.timed_out(started)
        self._fail(self._stall.timeout_error())

    def _fail(self, exc: Exception) -> None:
        if self._broken is None:
            self._broken = exc
            self._loop.remove_reader(self._fd)
            if self.on_broken is not None:
                self.on_broken()
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_readable(self) -> None:
        try:
            self._pg.consume_input()
        except Exception as exc:  # the server went away
            self._fail(exc)
            return
        while self.on_notify is not None and (notice := self._pg.notifies()) is not None:
            self.on_notify(notice.extra)
        self._wake()

    async def _readable(self) -> None:
        if self._broken is not None:
            raise self._broken
        self._waiter = self._loop.create_future()
        await self._waiter
        if self._broken is not None:
            raise self._broken

    async def _writable(self) -> None:
        if self._broken is not None:
            raise self._broken
        self._waiter = self._loop.create_future()  # woken by `_wake` too (a timeout)
        self._loop.add_writer(self._fd, self._wake)
        try:
            await self._waiter
        finally:
            self._loop.remove_writer(self._fd)
        if self._broken is not None:
            raise self._broken


Fetch = Callable[[Wire, list[K]], Awaitable[dict[K, V]]]


class SharedReads(Generic[K, V]):
    """`await get(key)`: the value `fetch` finds for the key (None if none), read by a query that
    started after this call."""

    def __init__(self, engine: Engine, fetch: "Fetch[K, V]") -> None:
        self.engine, self.fetch = engine, fetch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self._wire: Wire | None = None
        self._waiting: dict[K, asyncio.Future[V | None]] = {}  # for the next query
        self._asker: asyncio.Task[None] | None = None  # asks while anybody is waiting

    async def get(self, key: K) -> V | None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop or os.getpid() != self._pid:
            # A connection and its futures belong to the loop (and process) that made them.
            self._loop, self._pid = loop, os.getpid()
            self._wire, self._waiting, self._asker = None, {}, None
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = self._waiting[key] = loop.create_future()
        if self._asker is None or self._asker.done():
            self._asker = loop.create_task(self._ask())
        # Shielded: a request that goes away must not cancel the answer the others wait for.
        return await asyncio.shield(waiting)

    async def close(self) -> None:
        """At shutdown, on the loop that used it."""
        if self._loop is not asyncio.get_running_loop():
            return
        if self._asker is not None and not self._asker.done():
            self._asker.cancel()
        self._drop()

    async def _ask(self) -> None:
        """Query for everybody waiting, and again for whoever arrived during that query."""
        while self._waiting:
            waiting, self._waiting = self._waiting, {}
            try:
                found = await self.fetch(await self._connection(), list(waiting))
            except Exception as exc:
                self._drop()  # a broken connection is opened again by the next query
                for future in waiting.values():
                    future.set_exception(exc)
                    future.exception()  # marked retrieved: every waiter may have gone
            except BaseException:  # cancelled (the worker is stopping): so are the waiters
                self._drop()  # a statement may be half read
                for future in waiting.values():
                    future.cancel()
                raise
            else:
                for key, future in waiting.items():
                    future.set_result(found.get(key))

    async def _connection(self) -> Wire:
        if self._wire is None or not self._wire.usable:
            self._drop()
            self._wire = await Wire.open(self.engine)
        return self._wire

    def _drop(self) -> None:
        if self._wire is not None:
            self._wire.close()
        self._wire = None
