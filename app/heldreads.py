"""SQLite reads made on the event loop that share one read transaction while the content version
they are made under stays the same (at most `HOLD_SECONDS`), when the database is quiet.

Why: in autocommit mode every SELECT opens and closes a WAL read transaction (file locks on the
`-shm` file, a look at the WAL index). That was 2 us of the 9-11 us a stored essay page's read
cost at 10,000 and 100,000 essays, and random essays, read from the database each time, went
from 32.0-32.7k to 34.0-36.0k requests/s with the transaction held (2 workers, wrk -t2 -c32).

Why it is never stale: the caller reads the content version first (`app/beacon.py` publishes a
version after its write commits and before the writer answers anybody), and the transaction's
snapshot starts at its first read, after that. So the snapshot holds every write up to that
version. While the caller still reads the same version, no write has been acknowledged since;
a new version ends the transaction, and the next read starts a new one. This is the rule the
stored pages' memo already follows (`app/essaypage.py`).

Why only while the database is quiet, and for at most `HOLD_SECONDS`: a reader in an old
snapshot keeps SQLite from checkpointing the WAL past it, and any reader in the WAL keeps it
from starting the WAL over. Readers that each hold a snapshot a second at a time, under
traffic, always leave one such reader, so while writes went on (an import, `workshop pages
refresh`) the WAL grew without end: 4 MB with one transaction per read, 31.5 MB after 8 s of a
commit every 20 ms and growing. So a transaction is held only when no commit (by anyone) was
seen in the last look, one look a `HOLD_SECONDS` (`PRAGMA data_version`); while writes go on,
each read is its own transaction, as before, and the WAL grows by at most about two holds'
worth of writes. Outside an event loop (a script, a sync test) nothing would end a held
transaction: each read is its own.
"""

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from app import db

HOLD_SECONDS = 1.0


class HeldReads:
    """One connection of this process (made by `connect` at the first read) and its held read
    transaction; see the module."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._conn: sqlite3.Connection | None = None
        self._cursor: sqlite3.Cursor | None = None
        self._fork = db.forks  # the process the connection was opened in
        self._version: int | None = None  # what the held transaction was begun under
        self._until = 0.0  # monotonic time the held transaction ends by
        self._timer: asyncio.TimerHandle | None = None  # ends it if no read comes
        self._look_at = 0.0  # monotonic time of the next look for commits
        self._seen: int | None = None  # `PRAGMA data_version` at the last look
        self._quiet = False  # no commit between the last two looks

    def fetchone(self, sql: str, params: tuple[Any, ...], version: int) -> Any:
        """The first row of `sql`, read in a snapshot that holds every write up to `version`
        (the content version the caller read just before). Raises sqlite3.Error: `close`, and
        the next read opens a new connection."""
        if version != self._version or time.monotonic() >= self._until or self._fork != db.forks:
            if self._fork != db.forks:  # forked: the parent's connection is not ours to touch
                self._conn = self._cursor = None
                self._fork, self._seen, self._quiet = db.forks, None, False
            self.end()
            cursor = self._open()
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # nothing would end a held transaction: read on its own
                return cursor.execute(sql, params).fetchone()
            if not self._database_quiet(cursor):
                return cursor.execute(sql, params).fetchone()
            cursor.execute("BEGIN")  # deferred: the snapshot starts at the read below
            self._version, self._until = version, time.monotonic() + HOLD_SECONDS
            self._timer = loop.call_later(HOLD_SECONDS, self.end)
            return cursor.execute(sql, params).fetchone()
        assert self._cursor is not None  # a transaction is held on it
        return self._cursor.execute(sql, params).fetchone()

    def end(self) -> None:
        """End the held transaction (if any): the next read starts a new snapshot."""
        self._version = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            if self._conn is not None and self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:  # a broken connection: the next read opens another
            self.close()

    def close(self) -> None:
        conn, self._conn, self._cursor = self._conn, None, None
        self.end()
        if conn is not None and self._fork == db.forks:  # a parent's connection is not ours
            try:
                conn.close()
            except sqlite3.Error:
                pass  # closed anyway

    def _open(self) -> sqlite3.Cursor:
        if self._cursor is None:
            self._conn = self._connect()
            self._cursor = self._conn.cursor()
        return self._cursor

    def _database_quiet(self, cursor: sqlite3.Cursor) -> bool:
        """Whether no commit was seen between the last two looks (one look a hold)."""
        now = time.monotonic()
        if now >= self._look_at:
            seen = cursor.execute("PRAGMA data_version").fetchone()[0]
            self._quiet, self._seen = seen == self._seen, seen
            self._look_at = now + HOLD_SECONDS
        return self._quiet
