"""SQLite: every stored essay page's bytes also written to an append-only pack file beside the
database (`<database>-pages/`), and found there through a small row (`essay_packs`), so serving
a random essay reads one small row and its bytes with one `pread`.

Why: a stored page's row in `essay_pages` holds the gzip (about 5 KB) and the page (about 15 KB)
in a chain of overflow pages, which SQLite walks and copies on every read: 9.7 us for a random
page of a 100,000-essay archive, in a held read transaction. The small row and a `pread` of the
same bytes: 6.7 us; with the row kept by the worker while nothing is written (`StoredPages`,
like its memo of pages), the `pread` alone. A random essay in process 25-26 -> 18 us; `peer.sh`,
2 workers, runs alternating: 33.9-36.1k -> 43.8-51.1k requests/s over the benchmark's 5,000
random essays (docs/performance.md). The bytes are read, not mapped: a worker's memory does not
grow with the pages it serves.

How it stays correct:
- `essay_pages` stays the truth: it keeps every page's bytes, and backups, exports and
  PostgreSQL never need a pack. A page with no pack row, whose file is gone or reads short, is
  read from `essay_pages` (`StoredPages._read`).
- A pack row is written with its `essay_pages` row, in the same transaction, and dropped with it
  (`app/essaypage.py`). The bytes are appended and flushed to disk (`fdatasync`) before that
  transaction commits, so a committed row never points at bytes that are not there; bytes of a
  write that was rolled back are left where no row points at them.
- Only a writer holding the database's write lock appends (every write transaction takes it at
  BEGIN, `app/db.py`), so there is one appender at a time.
- A file is never rewritten, only appended to, and its name has a random part: a name in a row
  means the same bytes in every copy of the database and its folder.
- Left-behind bytes (a page stored again leaves its old copy: each new essay stores its
  neighbour's page again, an edit its own, a deploy that changes the templates every one) are
  dropped by `workshop pages refresh` once they would outweigh the pages in use
  (`worth_compacting`), and always by `refresh --all`: every page goes into a new file
  (`start_file`), then the files no row points at are removed (`remove_unused`). A reader that
  has a removed file open keeps reading it; one that has not reads the page from `essay_pages`.
"""

import asyncio
import errno
import logging
import os
import secrets
import struct
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, case, delete, func, insert, select
from sqlmodel import Session

from app import db
from app.models import EssayPack

log = logging.getLogger(__name__)

SUFFIX = ".pack"
HEADER = b"workshop essay pages, append-only (app/pagepack.py)\n"
PACKED_SQL = (
    "SELECT key, slug, etag, pack, at, html_len, gzip_len FROM essay_packs WHERE post_id = ?"
)
K: Any = EssayPack
# What a worker keeps of the pack rows it read (`Places`): their fields' bytes, about 100 a row
# (at 100,000 essays, 10 MB and an index of 0.4 MB), up to this; when full it starts again.
PLACES_BYTES = 16 * 1024 * 1024
# A post with a larger id is not kept (each read asks the database); so the index of offsets
# holds at most 16 MB (4 bytes an id), whatever `PLACES_BYTES` is.
PLACES_IDS = 4_000_000
# A kept row's fixed fields: at, html_len, gzip_len, its file (a number in `Places._names`),
# whether it is this build's page, the ETag's length, the slug's length; then ETag and slug.
_ROW = struct.Struct("<QIIHBBH")


@dataclass(frozen=True, slots=True)
class Page:
    """A stored page as `store` packs it."""

    post_id: int
    key: str
    slug: str
    etag: str
    html: bytes
    gzip: bytes


def folder(engine: Engine) -> Path | None:
    """The pack folder of an SQLite database file; None for PostgreSQL or a database in memory."""
    found = db.sqlite_file(engine)
    return None if found is None else folder_of(found)


def folder_of(database: Path) -> Path:
    """The pack folder beside the SQLite database file `database`."""
    return database.with_name(database.name + "-pages")


def store(session: Session, post_ids: Sequence[int], pages: Sequence[Page]) -> None:
    """After `essay_pages` was written for these posts, in the caller's write transaction (which
    holds the write lock: see the module): drop their pack rows, append the pages stored to the
    newest pack file and write theirs. A file that cannot be written leaves the rows out: those
    pages are read from `essay_pages`."""
    where = folder(session.get_bind())  # type: ignore[arg-type]
    if where is None:
        return
    _drop(session, post_ids)
    if not pages:
        return
    try:
        name = newest(where) or start_file(where)
        at = _append(where / name, [p.html + p.gzip for p in pages])
    except OSError as exc:
        log.warning("essay pages not packed (%s): they are read from the database", exc)
        return
    rows = []
    for page, start in zip(pages, at, strict=True):
        rows.append(
            {
                "post_id": page.post_id,
                "key": page.key,
                "slug": page.slug,
                "etag": page.etag,
                "pack": name,
                "at": start,
                "html_len": len(page.html),
                "gzip_len": len(page.gzip),
            }
        )
    session.execute(insert(EssayPack), rows)


def drop(session: Session, post_ids: Sequence[int]) -> None:
    """Drop these posts' pack rows (their bytes stay, pointed at by nothing)."""
    if folder(session.get_bind()) is not None:  # type: ignore[arg-type]
        _drop(session, post_ids)


def _drop(session: Session, post_ids: Sequence[int]) -> None:
    session.execute(delete(EssayPack).where(K.post_id.in_(list(post_ids))))


def newest(where: Path) -> str | None:
    """The pack file written to now: the newest started (see `start_file`)."""
    try:
        names = [n for n in os.listdir(where) if n.endswith(SUFFIX)]
    except FileNotFoundError:
        return None
    return max(names, default=None)


def start_file(where: Path) -> str:
    """A new, empty pack file, newer than every file in the folder; its name: a sequence number
    (the newest sorts last) and a random part (never the name of another file, ever)."""
    where.mkdir(exist_ok=True)
    last = newest(where)
    number = int(last.split("-", 1)[0]) + 1 if last else 1
    name = f"{number:08d}-{secrets.token_hex(8)}{SUFFIX}"
    fd = os.open(where / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _write_all(fd, HEADER)
        os.fsync(fd)
    finally:
        os.close(fd)
    return name


def worth_compacting(engine: Engine, page_key: str) -> bool:
    """Whether the pack files, once the pages not of this build are stored again, would hold at
    least as many left-behind bytes as bytes in use: then `workshop pages refresh` writes every
    page into a new file and removes the old ones. So the files stay under about twice the
    pages' size: a deploy that changes the templates stores every page again (2 GB at 100,000
    essays), and before this each one's copy stayed, a second, third, fourth... 2 GB."""
    where = folder(engine)
    if where is None or not where.is_dir():
        return False
    held = size_on_disk(engine) - len(HEADER) * sum(1 for _ in _files(where))
    with Session(engine) as session:
        live, stale = session.execute(
            select(
                func.coalesce(func.sum(K.html_len + K.gzip_len), 0),
                func.coalesce(func.sum(case((K.key != page_key, K.html_len + K.gzip_len))), 0),
            )
        ).one()
    left_behind = held - live + stale  # what is unused now, and what the refresh will leave
    return left_behind > 0 and left_behind >= live


def size_on_disk(engine: Engine) -> int:
    """The bytes of the database's pack files (0 for PostgreSQL or no folder)."""
    where = folder(engine)
    return sum(entry.stat().st_size for entry in _files(where)) if where is not None else 0


def _files(where: Path) -> Iterator[os.DirEntry[str]]:
    if where.is_dir():
        yield from (entry for entry in os.scandir(where) if entry.name.endswith(SUFFIX))


def remove_unused(engine: Engine) -> int:
    """Remove the pack files no row points at, except the newest; the number removed. Under the
    write lock, so no write is between choosing its file and committing its rows."""
    where = folder(engine)
    if where is None:
        return 0
    removed = 0
    with db.write_session(engine) as session:
        session.connection()  # BEGIN IMMEDIATE: the lock
        used = set(session.execute(select(K.pack).distinct()).scalars())
        keep = newest(where)
        for name in os.listdir(where):
            if name.endswith(SUFFIX) and name not in used and name != keep:
                (where / name).unlink(missing_ok=True)
                removed += 1
        session.rollback()
    return removed


def forget_missing(session: Session, where: Path | None = None) -> None:
    """Drop the rows whose pack file is not in the folder (a database copied or restored without
    it), so `workshop pages refresh` packs those pages again. `where`: the folder, if not the
    one beside the session's own database (a restore readies a copy for another file)."""
    where = where or folder(session.get_bind())  # type: ignore[arg-type]
    if where is None:
        return
    present = set(os.listdir(where)) if where.is_dir() else set()
    named = set(session.execute(select(K.pack).distinct()).scalars())
    missing = sorted(named - present)
    if missing:
        session.execute(delete(EssayPack).where(K.pack.in_(missing)))


UNPACKED_SQL = (
    "SELECT e.post_id, e.key, e.slug, e.etag, CAST(e.html AS BLOB), e.gzip FROM essay_pages AS e"
    " LEFT JOIN essay_packs AS k ON k.post_id = e.post_id"
    " WHERE (k.post_id IS NULL OR k.pack < ?) AND e.key = ? AND e.post_id > ?"
    " ORDER BY e.post_id LIMIT ?"
)


def pack_stored(
    session: Session, page_key: str, after: int, batch: int, older_than: str = ""
) -> list[int]:
    """Pack the next `batch` stored pages of this build that have no pack row (or one in a file
    older than the file named `older_than`: a compaction), ids after `after`, from their
    `essay_pages` bytes (no render); the ids packed."""
    params = (older_than, page_key, after, batch)
    found = session.connection().exec_driver_sql(UNPACKED_SQL, params).all()
    pages = [Page(row[0], row[1], row[2], row[3], bytes(row[4]), bytes(row[5])) for row in found]
    store(session, [p.post_id for p in pages], pages)
    return [p.post_id for p in pages]


def _append(path: Path, blobs: list[bytes]) -> list[int]:
    """Append the blobs to the file and flush them to disk; where each starts."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        start = os.fstat(fd).st_size
        _write_all(fd, b"".join(blobs))
        os.fdatasync(fd)
    finally:
        os.close(fd)
    at = []
    for blob in blobs:
        at.append(start)
        start += len(blob)
    return at


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Cold(Exception):
    """The bytes asked for are not all in memory (the kernel's page cache): reading them would
    wait for the disk."""


class PackReader:
    """This process's open pack files of one database, by name (opened at their first read, on
    the event loop).

    A page's read on the event loop does not wait for the disk (`read` with `wait` False):
    bytes the kernel let go of are read in a thread (`read_waiting`), and the worker answers
    other pages meanwhile. Why: on a machine that pages out file pages nobody touched for a
    few seconds (this one does: DAMON, up to 128 MB a second), a crawler over 100,000 essays
    met pages on disk every round, and each wait stalled every request of the worker behind
    it: its p99 went from 5-7 ms to 8-65 ms, rounds with the most disk reads the worst. (The
    pack row's own read in SQLite, with the response cache off every read, may still wait.)
    Where the kernel or the file system cannot tell (no `RWF_NOWAIT`: a tmpfs, an older
    kernel, not Linux), every read is a plain `pread`."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self._files: dict[str, int] = {}  # name -> fd, or -1: not there (read the database)
        self._nowait = getattr(os, "RWF_NOWAIT", None)  # None: reads cannot tell
        self._reading = 0  # reads in threads now: `close` leaves their files to the last
        self._closing = False

    def read(self, name: str, at: int, length: int, wait: bool = True) -> bytes | None:
        """The bytes, or None: no such file, or it reads short (read `essay_pages` instead).
        With `wait` False, raises `Cold` rather than wait for the disk."""
        fd = self._fd(name)
        if fd < 0:
            return None
        try:
            if wait or self._nowait is None:
                data = os.pread(fd, length, at)
            else:
                buffer = bytearray(length)
                if os.preadv(fd, [buffer], at, self._nowait) < length:
                    if os.fstat(fd).st_size < at + length:
                        return None  # the file is short: no wait would give the bytes
                    raise Cold(name)  # partly on disk
                data = bytes(buffer)
        except BlockingIOError as exc:  # none of it in memory
            raise Cold(name) from exc
        except OSError as exc:
            if not wait and exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                log.info("pack file reads cannot tell what is in memory (%s): plain reads", exc)
                self._nowait = None
                return self.read(name, at, length)
            return None
        return data if len(data) == length else None

    async def read_waiting(self, name: str, at: int, length: int) -> bytes | None:
        """What `read` gives, its wait for the disk in a thread."""
        fd = self._fd(name)  # files are opened on the event loop only
        if fd < 0 or self._closing:
            return None
        self._reading += 1
        try:
            data = await asyncio.to_thread(os.pread, fd, length, at)
        except OSError:
            return None
        finally:
            self._reading -= 1
            if self._closing and not self._reading:
                self.close()
        return data if len(data) == length else None

    def _fd(self, name: str) -> int:
        fd = self._files.get(name)
        if fd is None:
            fd = self._files[name] = self._open(name)
        return fd

    def _open(self, name: str) -> int:
        try:
            return os.open(self.where / name, os.O_RDONLY)
        except OSError as exc:
            log.warning(
                "pack file %s unreadable (%s): its pages are read from the database", name, exc
            )
            return -1

    def close(self) -> None:
        """Close the files, once no thread reads them (else the last read closes them)."""
        self._closing = True
        if self._reading:
            return
        for fd in self._files.values():
            if fd >= 0:
                os.close(fd)
        self._files = {}


class Places:
    """The pack rows (`PACKED_SQL`) one worker read, by post id, while the content version stays
    the same (`StoredPages` drops them all when it moves). Each read answered from here is one
    `pread`, with no query.

    Why compact: a crawler reads every essay of the archive in turn. A dict of the rows' tuples
    took about 0.5 KB a row, so it was bounded to 20,000 rows: at 100,000 essays four reads in
    five asked SQLite for the row (5-6 us in process; a sixth of a worker's time under `wrk`),
    and the crawler's p99 was 1.8x its value at 1,000 essays. Here a row is its fields' bytes
    in one `bytearray` (about 100 bytes: 20 of numbers, the ETag, the slug), found through an
    `array` of offsets indexed by post id (4 bytes an id): the whole archive fits. Neither is
    an object the garbage collector walks, and dropping them is freeing two buffers."""

    def __init__(self, page_key: str) -> None:
        self.page_key = page_key
        self.clear()

    def clear(self) -> None:
        self._index = array("i")  # post id -> where its row starts in `_rows`, plus 1; 0: none
        self._rows = bytearray()
        self._names: list[str] = []  # the pack files named, by their number here
        self._numbers: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._index) - self._index.count(0)

    def get(self, post_id: int) -> tuple[bool, str, bytes, str, int, int, int] | None:
        """The post's row as `row` gives it, if kept."""
        index = self._index
        if not 0 <= post_id < len(index) or not index[post_id]:
            return None
        start = index[post_id] - 1
        at, html_len, gzip_len, number, ours, etag_len, slug_len = _ROW.unpack_from(
            self._rows, start
        )
        start += _ROW.size
        etag = bytes(self._rows[start : start + etag_len])
        slug = self._rows[start + etag_len : start + etag_len + slug_len].decode()
        return bool(ours), slug, etag, self._names[number], at, html_len, gzip_len

    def row(
        self, post_id: int, packed: Any, keep: bool = True
    ) -> tuple[bool, str, bytes, str, int, int, int]:
        """A row read with `PACKED_SQL` (kept, with `keep`) in the form `get` gives: whether it
        is this build's page, slug, ETag (bytes), file, at, html_len, gzip_len."""
        key, slug, etag, name, at, html_len, gzip_len = packed
        found = (key == self.page_key, slug, etag.encode(), name, at, html_len, gzip_len)
        if keep:
            self._keep(post_id, found)
        return found

    def _keep(self, post_id: int, found: tuple[bool, str, bytes, str, int, int, int]) -> None:
        ours, slug, etag, name, at, html_len, gzip_len = found
        slug_bytes = slug.encode()
        if not 0 <= post_id < PLACES_IDS or len(etag) > 255 or len(slug_bytes) > 65535:
            return  # not kept: read from the database each time
        size = _ROW.size + len(etag) + len(slug_bytes)
        if len(self._rows) + size > PLACES_BYTES:
            self.clear()
        number = self._numbers.get(name)
        if number is None:
            if len(self._names) > 65535:
                return
            number = self._numbers[name] = len(self._names)
            self._names.append(name)
        index = self._index
        if post_id >= len(index):  # grown to this id, and some way past it
            index.frombytes(
                bytes(index.itemsize * (max(post_id + 1, len(index) * 5 // 4) - len(index)))
            )
        index[post_id] = len(self._rows) + 1
        self._rows += _ROW.pack(at, html_len, gzip_len, number, ours, len(etag), len(slug_bytes))
        self._rows += etag
        self._rows += slug_bytes
