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
"""

import asyncio
import os
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

import psycopg
from sqlalchemy import Engine

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
Connection = psycopg.AsyncConnection[Any]
Fetch = Callable[[Connection, list[K]], Awaitable[dict[K, V]]]


class SharedReads(Generic[K, V]):
    """`await get(key)`: the value `fetch` finds for the key (None if none), read by a query that
    started after this call."""

    def __init__(self, engine: Engine, fetch: "Fetch[K, V]") -> None:
        self.engine, self.fetch = engine, fetch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self._conn: Connection | None = None
        self._waiting: dict[K, asyncio.Future[V | None]] = {}  # for the next query
        self._asker: asyncio.Task[None] | None = None  # asks while anybody is waiting

    async def get(self, key: K) -> V | None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop or os.getpid() != self._pid:
            # A connection and its futures belong to the loop (and process) that made them.
            self._loop, self._pid = loop, os.getpid()
            self._conn, self._waiting, self._asker = None, {}, None
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
        if self._conn is not None:
            await self._conn.close()
        self._conn = None

    async def _ask(self) -> None:
        """Query for everybody waiting, and again for whoever arrived during that query."""
        while self._waiting:
            waiting, self._waiting = self._waiting, {}
            try:
                found = await self.fetch(await self._connection(), list(waiting))
            except Exception as exc:
                self._conn = None  # a broken connection is opened again by the next query
                for future in waiting.values():
                    future.set_exception(exc)
                    future.exception()  # marked retrieved: every waiter may have gone
            except BaseException:  # cancelled (the worker is stopping): so are the waiters
                for future in waiting.values():
                    future.cancel()
                raise
            else:
                for key, future in waiting.items():
                    future.set_result(found.get(key))

    async def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            url = self.engine.url.set(drivername="postgresql")
            self._conn = await psycopg.AsyncConnection.connect(
                url.render_as_string(hide_password=False), autocommit=True
            )
        return self._conn
