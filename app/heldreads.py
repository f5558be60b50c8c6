"""SQLite reads made on the event loop that share one read transaction while the content version
they are made under stays the same (at most `HOLD_SECONDS`).

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

Why it ends anyway within `HOLD_SECONDS`: a reader in an old snapshot keeps SQLite from
checkpointing the WAL past it and from starting the WAL over, so an idle worker would let the
WAL grow with every write made meanwhile. Outside an event loop (a script, a sync test) nothing
would end it: each read is then its own transaction, as before.
"""

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

HOLD_SECONDS = 1.0


class HeldReads:
    """One connection of this process (made by `connect` at the first read) and its held read
    transaction; see the module."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._conn: sqlite3.Connection | None = None
        self._cursor: sqlite3.Cursor | None = None
        self._version: int | None = None  # what the held transaction was begun under
        self._timer: asyncio.TimerHandle | None = None

    def fetchone(self, sql: str, params: tuple[Any, ...], version: int) -> Any:
        """The first row of `sql`, read in a snapshot that holds every write up to `version`
        (the content version the caller read just before). Raises sqlite3.Error: `close`, and
        the next read opens a new connection."""
        if self._cursor is None:
            self._conn = self._connect()
            self._cursor = self._conn.cursor()
        if version != self._version:
            self.end()
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # nothing would end a held transaction: read on its own
                return self._cursor.execute(sql, params).fetchone()
            self._cursor.execute("BEGIN")  # deferred: the snapshot starts at the read below
            self._version = version
            self._timer = loop.call_later(HOLD_SECONDS, self.end)
        return self._cursor.execute(sql, params).fetchone()

    def end(self) -> None:
        """End the held transaction (if any): the next read starts a new snapshot."""
        self._version = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._conn is not None and self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:  # a broken connection: the next read opens another
                self.close()

    def close(self) -> None:
        conn, self._conn, self._cursor = self._conn, None, None
        self.end()
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass  # closed anyway
