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
where SQLite served the same archive at 30.4-32.9k in the same minutes.

What goes in (`StoredPages._admit` in `app/essaypage.py`): every page read from the server while
the copy has room (`full` not yet seen); after that, only a page a worker reads from the server
again. Readers spread evenly over ten times more essays than the copy holds had it rewritten on
nearly every request, slower than no copy at all.

Small rows, bytes in files: a row says where a page is, in `bytes-<n>.bin` beside the SQLite
file (both workers append to the newest; `O_APPEND` places each write whole at its end); the
bytes begin with the page's slug, status and ETag. Each worker keeps the rows in a compact
index of its own (`_index`: three integers an entry, about 5 MB at 100,000 essays read in both
encodings), reading on a miss the rows either worker wrote since it last looked (`_catch_up`),
so a page the copy holds is one `pread`, with no query, until the post changes: readers spread
over the whole archive (a crawler) cost one `pread` a page, as on SQLite. The bytes stay
within two files: when the newest is full the next starts and the one before it is removed,
its rows becoming misses.

Never stale: a page is kept with the content version the worker that read it held from before
its query began until after it ended (the memo's rule), so its bytes hold every write up to
that version. A worker answers it only while its watcher is trusted (`app/watch.py`) and has
heard, one after the other, the notices of every write since that version, and none of them
named this post (`Watcher.kept_since`): each write's notice names the posts whose pages it
changed. Such a worker has heard of every acknowledged write, so a page kept there is the one
in the database. A page no write changed stays good across writes: the engine's new essay
every cycle changes its own page and its neighbours', not the archive's.
The file lives as long as one `workshop serve` (a fresh one each start, removed at exit), so a
database reset under another run never meets an old copy. A serve that was killed cannot remove
its folder: the next serve on the machine does (`app/tempfolders.py`).

Best effort: a read that fails is a miss; rows are written a database read's pages at a time
(`put_later`, `flush`), and rows that would wait for the other worker's write wait for the next
flush instead (a bounded number). The file never decides what is answered, only whether the
server is asked.
"""

import contextlib
import logging
import os
import sqlite3
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from app import tempfolders

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

# Set by `workshop serve` for its workers: the file they share (no file: no shared copy).
ENV = "WORKSHOP_PAGE_STORE_FILE"
FOLDER_PREFIX = tempfolders.PAGES  # a serve's folder in the temp dir, for its workers' file
TRIM_EVERY = 256  # writes between two trims to the bound
BYTES_PER_ENTRY = 24 * 1024  # a bytes file holds about this much per page of the bound

SCHEMA = """
CREATE TABLE IF NOT EXISTS pages (
    post_id INTEGER NOT NULL,
    gzip INTEGER NOT NULL,
    version INTEGER NOT NULL,
    file INTEGER NOT NULL,
    at INTEGER NOT NULL,
    length INTEGER NOT NULL,
    UNIQUE (post_id, gzip)
)
"""
GET_SQL = "SELECT file, at, length, version FROM pages WHERE post_id = ? AND gzip = ?"
# The rows written since a worker last looked, in the order written (REPLACE gives a new rowid).
SINCE_SQL = (
    "SELECT rowid, post_id, gzip, file, at, length, version FROM pages"
    " WHERE rowid > ? ORDER BY rowid LIMIT ?"
)
CATCH_UP_ROWS = 256  # read into the index on a miss: about 0.3 ms
PENDING_ROWS = 1024  # rows waiting for a flush the other worker's lock put off, at most
# REPLACE deletes the row it replaces: the rowid orders the rows by when they were kept.
PUT_SQL = "INSERT OR REPLACE INTO pages VALUES (?, ?, ?, ?, ?, ?)"
TRIM_SQL = "DELETE FROM pages WHERE rowid <= (SELECT max(rowid) FROM pages) - ?"
# The bytes of an entry: slug, status, ETag (empty: none), each ended by a NUL (none of them
# holds one), then b"P" and the page, or b"N": kept without a page.
WITH_PAGE, WITHOUT_PAGE = b"P", b"N"
AT_BITS = 40  # the index packs a file's number and an offset in it into one integer


class Kept(NamedTuple):
    slug: str
    status: str
    etag: bytes | None
    page: bytes | None


class Place(NamedTuple):
    """Where a kept page is: its row, without the bytes."""

    file: int
    at: int
    length: int
    version: int  # the content version it was kept under


class LocalPages:
    """The shared file, opened by one worker (see the module). Bounded to `max_entries` rows:
    the oldest kept go first; the pages' bytes to two files of about `max_entries *
    BYTES_PER_ENTRY` bytes: when the newest is full, the next starts and the one before it is
    removed (its rows become misses)."""

    def __init__(self, path: str | Path, max_entries: int) -> None:
        self.path, self.max_entries = str(path), max_entries
        self.folder = Path(path).parent
        self.file_bytes = max(max_entries, 1) * BYTES_PER_ENTRY
        self._writes = 0
        # Whether the copy has had to let pages go to stay within its bound, as this worker
        # last saw: till then every page read from the database is worth keeping.
        self.full = False
        self._warned = False  # a broken file is said once, not on every request
        self._readers: dict[int, int] = {}  # bytes file -> fd open to read, or -1: gone
        # Every row this worker read (see the module): for post id * 2 + gzip, three integers
        # from 3 * that key: file << AT_BITS | at, length, version (-1: none). Posts past the
        # bound's ids are not indexed (each read asks the file).
        self._index = array("q")
        self._index_keys = 2 * max(max_entries, 1)
        self._seen = 0  # the last rowid read into the index (`_catch_up`)
        self._pending: list[tuple[int, int, int, int, int, int]] = []  # rows to write (`flush`)
        self._writer: tuple[int, int] | None = None  # the bytes file appended to, its fd
        self._conn = sqlite3.connect(
            self.path, timeout=5, isolation_level=None, check_same_thread=False
        )
        # Both workers start at once: the setup waits for the other's; after it, a write never
        # waits (its rows wait for the next flush instead).
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=OFF")  # a copy: lost on a crash, read again
        self._conn.execute(SCHEMA)
        self._conn.execute("PRAGMA busy_timeout=0")

    def get(self, post_id: int, gzip: bool, version: int, since: int | None = None) -> Kept | None:
        """The page kept for this post and encoding under a version from `since` to `version`
        (see `locate`), if there is one."""
        place = self.locate(post_id, gzip, version, since)
        if place is None:
            return None
        kept = self.read(place)
        key = 3 * (2 * post_id + gzip)
        if kept is None and key < len(self._index):  # its file was removed: a newer row?
            self._index[key + 2] = -1
        return kept

    def locate(
        self, post_id: int, gzip: bool, version: int, since: int | None = None
    ) -> Place | None:
        """Where the page kept for this post and encoding is, if it was kept under a content
        version from `since` (default: `version` itself) to `version`: the caller knows no
        write changed it in between (`Watcher.kept_since`, app/watch.py). From this worker's
        index when it holds such a row; else from the file (and the index then holds it)."""
        lowest = version if since is None else since
        key = 3 * (2 * post_id + gzip)
        place = self._indexed(key, lowest, version)
        if place is not None:
            return place
        try:
            if self._catch_up():  # rows written since this worker looked: maybe this one
                place = self._indexed(key, lowest, version)
                if place is not None:
                    return place
            row = self._conn.execute(GET_SQL, (post_id, int(gzip))).fetchone()
        except sqlite3.Error as exc:
            self._warn(exc)
            return None
        if row is None:
            return None
        place = Place(*row)
        self._remember(key, place)
        return place if lowest <= place.version <= version else None

    def _indexed(self, key: int, lowest: int, version: int) -> Place | None:
        index = self._index
        if key < len(index) and lowest <= index[key + 2] <= version:
            pos = index[key]
            return Place(pos >> AT_BITS, pos & ((1 << AT_BITS) - 1), index[key + 1], index[key + 2])
        return None

    def _catch_up(self) -> bool:
        """Read into the index the rows written since this worker last looked (either
        worker's), `CATCH_UP_ROWS` at most: a worker comes to know the pages the other kept
        without a query for each. Whether there were any."""
        rows = self._conn.execute(SINCE_SQL, (self._seen, CATCH_UP_ROWS)).fetchall()
        for _, post_id, gzip, *place in rows:
            self._remember(3 * (2 * post_id + gzip), Place(*place))
        if rows:
            self._seen = rows[-1][0]
        return bool(rows)

    def _remember(self, key: int, place: Place) -> None:
        index = self._index
        if key >= 3 * self._index_keys:
            return
        if key >= len(index):  # grown to this key, and some way past it (whole entries)
            index.extend([-1] * (max(key + 3, len(index) // 12 * 15) - len(index)))
        index[key] = place.file << AT_BITS | place.at
        index[key + 1], index[key + 2] = place.length, place.version

    def read(self, place: Place) -> Kept | None:
        """The page at `place`; None: its file was removed since (a miss)."""
        data = self._read(place.file, place.at, place.length)
        if data is None:
            return None
        try:
            ends_slug = data.index(0)
            ends_status = data.index(0, ends_slug + 1)
            ends_etag = data.index(0, ends_status + 1)
        except ValueError:  # not an entry (cannot happen but for a broken file): a miss
            return None
        with_page = data[ends_etag + 1] == WITH_PAGE[0]
        return Kept(
            data[:ends_slug].decode(),
            data[ends_slug + 1 : ends_status].decode(),
            data[ends_status + 1 : ends_etag] or None,
            data[ends_etag + 2 :] if with_page else None,  # the one copy of the page
        )

    def put(self, post_id: int, gzip: bool, version: int, kept: Kept) -> None:
        """Keep a page now (`put_later`, then `flush`)."""
        self.put_later(post_id, gzip, version, kept)
        self.flush()

    def put_later(self, post_id: int, gzip: bool, version: int, kept: Kept) -> None:
        """Append the page's bytes now; its row goes in with the others at the next `flush`:
        one write transaction for the pages of one database read, not one each. Both
        workers filling the copy at once had one write in twenty skipped (the other's
        transaction held the lock)."""
        try:
            head = b"%s\0%s\0%s\0" % (kept.slug.encode(), kept.status.encode(), kept.etag or b"")
            if kept.page is None:
                number, at, length = self._append([head, WITHOUT_PAGE])
            else:
                number, at, length = self._append([head, WITH_PAGE, kept.page])
        except OSError:
            return  # full, or cut short: the next read asks
        if len(self._pending) < PENDING_ROWS:
            self._pending.append((post_id, int(gzip), version, number, at, length))

    def flush(self) -> None:
        """Write the rows `put_later` left, in one transaction; if the other worker holds the
        lock they wait for the next flush (without waiting now)."""
        if not self._pending:
            return
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(PUT_SQL, self._pending)
                written = len(self._pending)
                trim = self._writes // TRIM_EVERY != (self._writes + written) // TRIM_EVERY
                if trim and self._conn.execute(TRIM_SQL, (self.max_entries,)).rowcount > 0:
                    self.full = True
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error:
            return  # busy (the other worker writes), or broken: kept for the next flush
        self._writes += written
        self._pending = []

    def _read(self, number: int, at: int, length: int) -> bytes | None:
        fd = self._readers.get(number)
        if fd is None:
            for older in [n for n in self._readers if n < number - 1]:  # removed: let go
                older_fd = self._readers.pop(older)
                if older_fd >= 0:
                    os.close(older_fd)
            fd = self._readers[number] = self._open(number)
        if fd < 0:
            return None
        try:
            data = os.pread(fd, length, at)
        except OSError as exc:
            self._warn(exc)
            return None
        return data if len(data) == length else None

    def _append(self, parts: list[bytes]) -> tuple[int, int, int]:
        """Append an entry to the newest bytes file in one write (the other worker may append
        to it too: O_APPEND places each write whole at the end); the file, where the entry
        starts, its length. Once the file is full (whoever filled it), the next starts and the
        next append looks for the newest file again; until then no folder listing."""
        if self._writer is None:
            newest = self._newest()
            fd = os.open(self._bytes_path(newest), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._writer = (newest, fd)
        number, fd = self._writer
        length = sum(len(part) for part in parts)
        if os.writev(fd, parts) != length:
            raise OSError("short write")  # its row is not written: the bytes are unused
        end = os.lseek(fd, 0, os.SEEK_CUR)  # this descriptor's own position: after the write
        if end >= self.file_bytes:
            self._start_next(number)
            self.full = True  # the next file's start removes the one before it
            os.close(fd)
            self._writer = None
        return number, end - length, length

    def _newest(self) -> int:
        numbers = [
            int(name[6:-4])
            for name in os.listdir(self.folder)
            if name.startswith("bytes-") and name.endswith(".bin")
        ]
        return max(numbers, default=1)

    def _start_next(self, number: int) -> None:
        """The next file (the other worker may have started it: either is fine), and the one
        before this one removed."""
        with contextlib.suppress(FileExistsError):
            os.close(
                os.open(self._bytes_path(number + 1), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._bytes_path(number - 1))

    def _bytes_path(self, number: int) -> Path:
        return self.folder / f"bytes-{number}.bin"

    def _open(self, number: int) -> int:
        try:
            return os.open(self._bytes_path(number), os.O_RDONLY)
        except OSError:
            return -1  # removed: a miss

    def _warn(self, exc: Exception) -> None:
        if not self._warned:
            log.warning("local page copy unreadable (%s): asking the database", exc)
            self._warned = True

    def close(self) -> None:
        self._conn.close()
        for fd in self._readers.values():
            if fd >= 0:
                os.close(fd)
        if self._writer is not None:
            os.close(self._writer[1])
        self._readers, self._writer = {}, None


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
    with contextlib.ExitStack() as stack:
        try:
            folder = stack.enter_context(tempfolders.held(FOLDER_PREFIX))
        except OSError as exc:
            log.warning("no local page copy (%s): every page read asks the database", exc)
            yield
            return
        os.environ[ENV] = os.path.join(folder, "pages.sqlite")
        try:
            yield
        finally:
            os.environ.pop(ENV, None)


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
