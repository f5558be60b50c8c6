"""Every wait for PostgreSQL's answer is bounded, and a server that stopped answering is told
from one timeout.

A server that stops answering (its processes stopped or its host paused, a network that drops
packets without a word) leaves the connections to it open: its kernel, or no one, acknowledges
what is sent, so neither libpq nor TCP keepalives notice, and `statement_timeout` runs on the
server's own clock, which stopped with it. Requests waited without end: with the server
SIGSTOPped, an essay page, `GET /api/v1/posts` and a POST were still waiting after 45 s (nginx
in `deploy/` gives up after 30).

So the app bounds each wait itself, on every PostgreSQL connection it makes: the engine's pool
(`BoundedConnection`), the workers' event-loop connections (`app/pgshared.py`) and the one
holding the claims lock (`app/claimowners.py`). A wait for one answer (a statement, a commit, a
pool's ping) longer than `Settings.db_timeout_seconds` gives the connection up (its answer half
read, it cannot be used again) and raises `DatabaseStalled`, an OperationalError: the request
answers 503 with Retry-After, as for a database that is down. A write whose COMMIT went
unanswered may still commit when the server wakes: it was not acknowledged, and the engine's
retry finds it (by its cycle, or its Idempotency-Key's answer, committed with it).

One timeout is enough to tell the server stalled, if nothing else it was asked has been answered
since that wait began (one slow statement on a healthy server is only that request's 503). Then
every other wait and connection of that engine in this process fails at once (`Stall`), rather
than each request waiting out the bound in turn: an essay page asks the database up to four
times before its route gives up (the front door's read, the stored page's, the content version,
the route's session). One caller every `PROBE_SECONDS` still asks, so the first answer after the
server is back ends the stall.
"""

import os
import threading
import time
import weakref
from typing import Any

import psycopg
from psycopg import errors
from psycopg.abc import PQGen
from sqlalchemy import Engine, event

# Seconds to wait for PostgreSQL to accept a connection. libpq's default is to wait as long as
# the network does (130 s seen behind a stalled proxy): every request, `/readyz` and the CLI hung
# that long, where a clear 503 (or error) after a few seconds is what an operator can act on.
PG_CONNECT_TIMEOUT = 5

# An idle connection silently dropped (a NAT or load balancer timing it out between requests)
# is found dead by the kernel within a minute, instead of TCP's fifteen: the pool's ping then
# fails at once and the pool connects again, instead of the ping waiting out the bound.
PG_KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}

DEFAULT_TIMEOUT = 10.0  # for an engine not made by `db.make_engine`
PROBE_SECONDS = 1.0  # while stalled: how often one caller asks the server again


class DatabaseStalled(psycopg.OperationalError):
    """PostgreSQL did not answer within the bound (or, a moment ago, another wait's)."""


class Stall:
    """Whether the server stopped answering, for one engine in this process (see the module)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._probe_at: float | None = None  # None: not stalled; else when the next may ask
        self._since = 0.0  # when the stall began
        self._answered_at = 0.0  # the last answer from the server

    def check(self) -> None:
        """Before a wait or a connection: raise at once while stalled, except for one caller
        every `PROBE_SECONDS`, which asks (bounded as any other)."""
        if self._probe_at is None:  # the hot path: one attribute read
            return
        with self._lock:
            now = time.monotonic()
            if self._probe_at is None:
                return
            if now < self._probe_at:
                raise DatabaseStalled(
                    f"PostgreSQL has answered nothing for {now - self._since:.0f} s "
                    f"(a wait of {self.timeout:g} s went unanswered); not asked again yet"
                )
            # This caller probes: the others still fail at once until it has its answer or
            # gives up (then `timed_out` sets the next probe; this is in case it does neither).
            self._probe_at = now + self.timeout + PG_CONNECT_TIMEOUT + PROBE_SECONDS

    def answered(self) -> None:
        """The server answered (a result or an error: either way it did not leave us waiting)."""
        self._answered_at = time.monotonic()
        if self._probe_at is not None:
            with self._lock:
                self._probe_at = None

    def timed_out(self, started: float) -> None:
        """A wait begun at `started` (time.monotonic()) was not answered in time."""
        with self._lock:
            now = time.monotonic()
            if self._probe_at is None and self._answered_at < started:
                self._since = started
            elif self._probe_at is None:
                return  # others were answered meanwhile: this statement alone was slow
            self._probe_at = now + PROBE_SECONDS

    def timeout_error(self) -> DatabaseStalled:
        return DatabaseStalled(f"PostgreSQL did not answer within {self.timeout:g} s")


_stalls: "weakref.WeakKeyDictionary[Engine, Stall]" = weakref.WeakKeyDictionary()


def _after_fork_in_child() -> None:
    for stall in list(_stalls.values()):  # another thread of the parent may have held one
        stall._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def install(engine: Engine, timeout: float) -> None:
    """Bound every wait of this PostgreSQL engine's connections by `timeout` seconds."""
    stall = _stalls[engine] = Stall(timeout)

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> "BoundedConnection":
        return connect(stall, *cargs, **cparams)


def stall_of(engine: Engine) -> Stall:
    """The engine's `Stall`, which every connection made for it shares."""
    found = _stalls.get(engine)
    if found is None:
        found = _stalls.setdefault(engine, Stall(DEFAULT_TIMEOUT))
    return found


class BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection that waits at most its stall's `timeout` for each answer.

    psycopg has no client-side timeout of its own for statements: `wait` is the one place every
    round trip (a statement, a fetch, a commit or rollback, the pool's ping) waits for the
    server, and psycopg 3.3's takes a timeout (`_WaitTimeout`, internal, when it expires)."""

    stall: Stall  # set by `connect`

    def wait(self, gen: PQGen[Any], interval: float = 0.1, timeout: float | None = None) -> Any:
        stall = self.stall
        stall.check()  # raised before `gen` runs: nothing was sent
        bound = stall.timeout if timeout is None else min(timeout, stall.timeout)
        started = time.monotonic()
        try:
            found = super().wait(gen, interval, timeout=bound)
        except errors._WaitTimeout:
            # The answer is half read at best: the connection cannot be used again. Closed,
            # it is `closed`, so SQLAlchemy drops it from the pool.
            self.pgconn.finish()
            stall.timed_out(started)
            raise stall.timeout_error() from None
        except psycopg.Error:
            stall.answered()
            raise
        stall.answered()
        return found


def connect(stall: Stall, conninfo: str = "", **kwargs: Any) -> BoundedConnection:
    """`psycopg.connect`, for a `BoundedConnection` sharing `stall`."""
    stall.check()
    started = time.monotonic()
    try:
        conn = BoundedConnection.connect(conninfo, **kwargs)
    except errors.ConnectionTimeout:
        stall.timed_out(started)
        raise
    except psycopg.Error:  # refused, or the server said no: an answer all the same
        stall.answered()
        raise
    stall.answered()
    conn.stall = stall
    return conn


async def connect_async(stall: Stall, conninfo: str, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    """`psycopg.AsyncConnection.connect`, noted in `stall` (`app/pgshared.py` bounds the
    waits of its connections itself)."""
    stall.check()
    started = time.monotonic()
    try:
        conn = await psycopg.AsyncConnection.connect(conninfo, **kwargs)
    except errors.ConnectionTimeout:
        stall.timed_out(started)
        raise
    except psycopg.Error:
        stall.answered()
        raise
    stall.answered()
    return conn
