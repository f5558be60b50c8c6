"""PostgreSQL: the stored essay pages that the workers of one `workshop serve` have read, kept in
a SQLite file on this machine that they share (`LocalPages`), each under the content version it
was read at.

Why: on PostgreSQL a stored page is a round trip to the database server, and the server's
backends share the machine's cores with the workers; a worker's own memo (`app/essaypage.py`)
holds a bounded number of pages, so a stream of requests for random essays read nearly every
page from the server (0.2-0.3 of nginx, where SQLite's local read reaches 0.5). This file is the
machine's copy: a local read (about 10 us, no lock: WAL readers never wait) that every worker
fills, kept out of the workers' memory (the file is read, not mapped), so a worker's memory does
not grow with the archive. Random essays of a 10,000-essay archive (5,000 paths), 2 workers,
`wrk -t2 -c32`, runs alternating: 13.7-15.4k requests/s without the copy, 30.0-30.7k with it,
where SQLite served the same archive at 30.4-32.9k in the same minutes. 16 KiB database pages:
a stored page (about 15 KB, 5 KB gzipped) spans one or two, where 64 KiB pages made each read
and write copy four times the bytes (13 against 10 us a read, 76 against 38 us a write).

Never stale: a page is kept with the content version the worker that read it held from before
its query began until after it ended (the memo's rule), and it is answered only to a worker that
holds that same version while its watcher is trusted (`app/watch.py`). Such a worker has heard
of every acknowledged write, so any write after the page was read has moved its version on.
The file lives as long as one `workshop serve` (a fresh one each start, removed at exit), so a
database reset under another run never meets an old copy.

Best effort: a read that fails is a miss, a write that would wait for the other worker is
skipped. The file never decides what is answered, only whether the server is asked.
"""

import contextlib
import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

# Set by `workshop serve` for its workers: the file they share (no file: no shared copy).
ENV = "WORKSHOP_PAGE_STORE_FILE"
TRIM_EVERY = 256  # writes between two trims to the bound

SCHEMA = """
CREATE TABLE IF NOT EXISTS pages (
    post_id INTEGER NOT NULL,
    gzip INTEGER NOT NULL,
    version INTEGER NOT NULL,
    slug TEXT NOT NULL,
    status TEXT NOT NULL,
    etag BLOB,
    page BLOB,
    UNIQUE (post_id, gzip)
)
"""
GET_SQL = (
    "SELECT slug, status, etag, page FROM pages WHERE post_id = ? AND gzip = ? AND version = ?"
)
# REPLACE deletes the row it replaces: the rowid orders the rows by when they were kept.
PUT_SQL = "INSERT OR REPLACE INTO pages VALUES (?, ?, ?, ?, ?, ?, ?)"
TRIM_SQL = "DELETE FROM pages WHERE rowid <= (SELECT max(rowid) FROM pages) - ?"


class Kept(NamedTuple):
    slug: str
    status: str
    etag: bytes | None
    page: bytes | None


class LocalPages:
    """The shared file, opened by one worker (see the module). Bounded to `max_entries` pages:
    the oldest kept go first."""

    def __init__(self, path: str | Path, max_entries: int) -> None:
        self.path, self.max_entries = str(path), max_entries
        self._writes = 0
        self._warned = False  # a broken file is said once, not on every request
        self._conn = sqlite3.connect(
            self.path, timeout=5, isolation_level=None, check_same_thread=False
        )
        # Both workers start at once: the setup waits for the other's; after it, a write never
        # waits (it is skipped instead). The page size: see the module.
        self._conn.execute("PRAGMA page_size=16384")
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=OFF")  # a copy: lost on a crash, read again
        self._conn.execute(SCHEMA)
        self._conn.execute("PRAGMA busy_timeout=0")

    def get(self, post_id: int, gzip: bool, version: int) -> Kept | None:
        try:
            row = self._conn.execute(GET_SQL, (post_id, int(gzip), version)).fetchone()
        except sqlite3.Error as exc:
            if not self._warned:
                log.warning("local page copy unreadable (%s): asking the database", exc)
                self._warned = True
            return None
        return None if row is None else Kept(*row)

    def put(self, post_id: int, gzip: bool, version: int, kept: Kept) -> None:
        try:
            self._conn.execute(PUT_SQL, (post_id, int(gzip), version, *kept))
            self._writes += 1
            if self._writes % TRIM_EVERY == 0:
                self._conn.execute(TRIM_SQL, (self.max_entries,))
        except sqlite3.Error:
            pass  # busy (the other worker writes) or full: the next read asks the database

    def close(self) -> None:
        self._conn.close()


def wanted(settings: "Settings") -> bool:
    """Whether `workshop serve` gives its workers a shared copy: PostgreSQL, with the response
    cache on (the copy follows the same content version) and a bound above 0."""
    return not settings.is_sqlite and settings.response_cache and settings.page_copy_max_entries > 0


@contextlib.contextmanager
def shared_copy(settings: "Settings") -> Iterator[None]:
    """Around `workshop serve`: a new folder for its workers' file (named to them in `ENV`),
    removed when it stops. No folder to be had (a read-only temp dir): serve without a copy."""
    if not wanted(settings):
        yield
        return
    try:
        folder = tempfile.mkdtemp(prefix="workshop-pages-")
    except OSError as exc:
        log.warning("no local page copy (%s): every page read asks the database", exc)
        yield
        return
    os.environ[ENV] = os.path.join(folder, "pages.sqlite")
    try:
        yield
    finally:
        os.environ.pop(ENV, None)
        shutil.rmtree(folder, ignore_errors=True)


def for_worker(settings: "Settings") -> LocalPages | None:
    """This worker's handle on the file `workshop serve` made for its workers, if any."""
    path = os.environ.get(ENV)
    if not path or not wanted(settings):
        return None
    try:
        return LocalPages(path, settings.page_copy_max_entries)
    except sqlite3.Error as exc:  # e.g. the folder is gone: serve without the copy
        log.warning("no local page copy at %s (%s): every page read asks the database", path, exc)
        return None
