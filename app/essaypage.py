"""The essay page: stored whole at write time, served with one indexed read.

Serving (`StoredPages`): one primary-key read of a post's stored page (`essay_pages`: on SQLite
that one row, which holds the post's slug; on PostgreSQL joined with the post's id, slug and
status), which is the page exactly as served, site URL filled in, and its gzip: a current stored
page is sent as it is (`StoredEssayPages`), with the ETag computed when it was stored. A page
stored by another build or for another site URL (`Renderer.page_key`) is not current, and
renders live until `workshop pages refresh`.

Rendering (`render`, at write time by `store_pages`, or live for a page with no current stored
copy): 1. the post's own columns with its stored post-only HTML (`app/fragments.py`), 2. the
older and newer essays (id, slug, title only, each an index seek on (status, published_at, id))
together with the minds of all three posts, in one UNION ALL. No ORM objects, no bodies of the
neighbours. A page shows its neighbours' titles and minds, so every write refreshes the stored
pages of the posts it changed and of their neighbours before and after (`posts._refresh_pages`).
"""

import gzip
import hashlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Engine,
    Integer,
    bindparam,
    delete,
    insert,
    literal,
    null,
    or_,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from app import db, pagepack, watch
from app.errors import PostNotFound
from app.fragments import Renderer
from app.heldreads import HeldReads
from app.models import STATUS_PUBLISHED, EssayPack, EssayPage, Mind, Post
from app.pagestore import Kept, LocalPages
from app.pgshared import Fetch, SharedReads, Wire
from app.urls import post_path

if TYPE_CHECKING:
    from app.posts import PostView

P: Any = Post
M: Any = Mind
PAGE_COLUMNS = (
    P.id,
    P.slug,
    P.status,
    P.title,
    P.excerpt,
    P.published_at,
    P.debate_outcome,
    P.page_html,
)


@dataclass(frozen=True, slots=True)
class PageRow:
    id: int
    slug: str
    status: str
    title: str
    excerpt: str
    published_at: datetime
    debate_outcome: str | None
    page_html: str | None


@dataclass(frozen=True, slots=True)
class Link:
    id: int
    slug: str
    title: str


@dataclass(frozen=True, slots=True)
class MindRow:
    name: str
    confidence: float


@dataclass
class Context:
    older: Link | None = None
    newer: Link | None = None
    minds: list[MindRow] = field(default_factory=list)  # this essay's, in order
    absent: list[str] = field(default_factory=list)  # the neighbours' minds not in this debate


def page_row(session: Session, post_id: int) -> PageRow:
    row = session.execute(_PAGE_ROW, {"pid": post_id}).first()
    if row is None:
        raise PostNotFound(f"no post with id {post_id}")
    return PageRow(*row)


def _order(row: Any) -> tuple[int, int]:
    return int(row[0]), -1 if row[4] is None else int(row[4])


def _context_statement() -> Any:
    """Built once (statement construction costs more than running it); bound per request."""
    key = tuple_(P.published_at, P.id)
    published = P.status == STATUS_PUBLISHED
    at = tuple_(bindparam("at", type_=P.published_at.type), bindparam("pid", type_=Integer))
    older = (
        select(P.id, P.slug, P.title)
        .where(published, key < at)
        .order_by(P.published_at.desc(), P.id.desc())
        .limit(1)
        .subquery()
    )
    newer = (
        select(P.id, P.slug, P.title)
        .where(published, key > at)
        .order_by(P.published_at.asc(), P.id.asc())
        .limit(1)
        .subquery()
    )

    def side(role: int, sub: Any) -> Any:
        return select(
            literal(role).label("role"),
            sub.c.id,
            sub.c.slug,
            sub.c.title,
            M.position,
            M.name,
            M.confidence,
        ).select_from(sub.outerjoin(M, M.post_id == sub.c.id))

    own = select(
        literal(0).label("role"),
        M.post_id,
        null(),
        null(),
        M.position,
        M.name,
        M.confidence,
    ).where(M.post_id == bindparam("pid", type_=Integer))
    return union_all(own, side(1, older), side(2, newer))


_CONTEXT = _context_statement()
_PAGE_ROW = select(*PAGE_COLUMNS).where(P.id == bindparam("pid", type_=Integer))


def context(session: Session, post: PageRow) -> Context:
    """Neighbours and minds in one statement (see the module docstring)."""
    rows = session.execute(_CONTEXT, {"at": post.published_at, "pid": post.id}).all()
    found = Context()
    neighbour_minds: dict[int, list[tuple[int, str]]] = {1: [], 2: []}
    for role, post_id, slug, title, position, name, confidence in sorted(rows, key=_order):
        if role == 0:
            found.minds.append(MindRow(name, confidence))
            continue
        link = Link(post_id, slug, title)
        if role == 1:
            found.older = link
        else:
            found.newer = link
        if name is not None:
            neighbour_minds[role].append((position, name))
    if post.debate_outcome is not None:
        present = {m.name for m in found.minds}
        names = [n for role in (1, 2) for _, n in sorted(neighbour_minds[role])]
        found.absent = list(dict.fromkeys(n for n in names if n not in present))
    return found


# --- the stored page ---------------------------------------------------------------------------

E: Any = EssayPage
K: Any = EssayPack
# Plain SQL, one statement per encoding (only the blob served is read); the page comes as
# bytes, ready to send (CAST: no decoding into a str).
# SQLite: the one row of `essay_pages`, whose small columns come first (migration 0007).
STORED_SQL = "SELECT key, slug, etag, CAST(html AS BLOB) FROM essay_pages WHERE post_id = ?"
STORED_GZIP_SQL = STORED_SQL.replace("CAST(html AS BLOB)", "gzip")
# PostgreSQL, for the requests waiting together (libpq's placeholders): the posts asked for,
# each with the ETag of the page this worker kept (or NULL); a page whose ETag is still that
# one is not sent again (NULL), the worker has its bytes.
STORED_MANY_SQL = (
    "SELECT p.id, p.slug, p.status, e.key,"
    " CASE WHEN e.etag = k.etag THEN NULL ELSE e.html END, e.etag"
    " FROM unnest(CAST($1 AS integer[]), CAST($2 AS text[])) AS k(id, etag)"
    " JOIN posts AS p ON p.id = k.id LEFT JOIN essay_pages AS e ON e.post_id = p.id"
)
STORED_MANY_GZIP_SQL = STORED_MANY_SQL.replace("e.html", "e.gzip")
_NEIGHBOURS = select(P.id, P.published_at).where(P.id.in_(bindparam("ids", expanding=True)))
# Pages kept per worker (see `StoredPages`).
MEMO_ENTRIES = 1000
MEMO_BYTES = 8 * 1024 * 1024
# PostgreSQL: pages a worker read from the server, remembered so that a page goes into the
# machine's copy only when it is read again (see `StoredPages._admit`). Few, so that readers
# spread evenly over the archive rarely write: at 100,000 essays, one page in 50 read from the
# server is one read within the last 2,000; a page of 5,000 read often is in after a few reads.
ASKED_ENTRIES = 2_000


@dataclass(frozen=True, slots=True)
class Stored:
    id: int
    slug: str
    status: str
    page: bytes | None  # the page as served, in the encoding asked for; None: not stored
    etag: bytes | None  # the page's ETag header (either encoding), made when it was stored


class StoredPages:
    """Reads a post's id, slug, status and current stored page: one primary-key read. A page
    stored by another build or for another site counts as not stored.

    On SQLite the read runs inline on this process's own connection (a local file: 5 us, and
    WAL readers never wait; with the cache on, in a read transaction held while the content
    version stays the same: `app/heldreads.py`), and the rows read are kept while the
    content version stays the same: the beacon (`app/beacon.py`) tells in well under a
    microsecond whether anything was written since, so a popular essay costs no read at all,
    and a write is seen at once, as by the response cache. Bounded (`MEMO_ENTRIES`,
    `MEMO_BYTES`): when full it starts again, so a stream of random essays costs no bookkeeping.
    A page's bytes come from its pack file (`app/pagepack.py`), and the small row saying where
    they are is kept under the same rule, compactly, the whole archive's (`pagepack.Places`,
    about 100 bytes each): a page read again before the next write costs one `pread`. (On
    PostgreSQL the machine's copy keeps an index of its own, below.)
    On PostgreSQL the read runs on the event loop, shared with the requests waiting at the same
    time (`app/pgshared.py`): one statement per round trip reads every post they asked for, as
    fresh as a query of each request's own. With the response cache on, the pages read are kept
    while the worker's watcher (`app/watch.py`) holds the same content version, as on SQLite; and
    while the watcher is not trusted, the read names the ETag of the page this worker kept for
    each, and a page that still has that ETag is not sent again (a popular essay's round trip
    carries a few hundred bytes, not its page). The machine's copy (`app/pagestore.py`) keeps
    a page through writes that did not change it, as the watcher's notices tell.
    """

    def __init__(
        self,
        engine: Engine,
        page_key: str,
        memo: bool = True,
        use_watcher: bool = True,
        local: LocalPages | None = None,
    ) -> None:
        from app.cache import VersionReader  # the cache's reader of the content version

        self.engine, self.page_key = engine, page_key
        sqlite = engine.dialect.name == "sqlite"
        # PostgreSQL: one shared reader per encoding, each reading only the blob it serves.
        self._pg = None
        if not sqlite:
            self._pg = tuple(
                SharedReads(engine, self._fetcher(sql, gzip))
                for gzip, sql in enumerate((STORED_MANY_SQL, STORED_MANY_GZIP_SQL))
            )
        self._memo_on = memo
        self._watched = memo and use_watcher and not sqlite  # False: tests of the shared read
        self._local = local if self._watched else None  # the machine's copy (app/pagestore.py)
        self._versions = VersionReader(engine) if sqlite and memo else None
        self._held = HeldReads(lambda: db.sqlite_loop_connection(engine))
        where = pagepack.folder(engine)
        self._packs = pagepack.PackReader(where) if where is not None else None
        # SQLite: where pages are, kept per content version (see the class): post id -> its
        # pack row (`_packed`). (The machine's copy on PostgreSQL keeps its own index.)
        self._places = pagepack.Places(page_key)
        self._asked: set[int] = set()  # PostgreSQL: pages read from the server (`_admit`)
        self._memo: dict[tuple[int, bool], Stored] = {}
        self._memo_version = -1
        self._memo_bytes = 0

    def get_now(self, post_id: int, gzip: bool = False) -> Stored | None:
        """What `get` reads, if it can be told without waiting: on SQLite, unless the page's
        bytes are on disk (read in a thread: `read`); on PostgreSQL, a page kept while the
        watcher is trusted. None: only `get` can tell."""
        if self._pg is not None:
            if self._watched:
                watcher = watch.for_engine(self.engine)
                if watcher.trusted:  # it heard of every acknowledged write
                    self._memo_at(watcher.version)
                    found = self._memo.get((post_id, gzip))
                    if found is None and self._local is not None:
                        found = self._from_local(post_id, gzip, watcher)
                        if found is not None:  # a popular page stays in memory, not in the file
                            self._keep(found, gzip)
                    return found
            return None
        if self._versions is None:
            return self._read(post_id, gzip)
        version = self._versions.read_now()
        assert version is not None  # SQLite always knows now
        self._memo_at(version)
        found = self._memo.get((post_id, gzip))
        if found is None:
            try:
                found = self._read(post_id, gzip, version, wait=False)
            except pagepack.Cold:
                return None  # its bytes are on disk: `read` waits for them in a thread
            self._keep(found, gzip)
        return found

    async def get(self, post_id: int, gzip: bool = False) -> Stored:
        found = self.get_now(post_id, gzip)
        if found is not None:
            return found
        return await self.read(post_id, gzip)

    async def read(self, post_id: int, gzip: bool = False) -> Stored:
        """What `get` reads once `get_now` could not tell. PostgreSQL: read on the event loop
        with the requests waiting meanwhile (a query that starts after this call). SQLite: a
        page whose bytes were on disk, read in a thread (`pagepack.PackReader`)."""
        if self._pg is None:
            return await self._read_waiting(post_id, gzip)
        found = await self._pg[gzip].get(post_id)
        if found is None:
            raise PostNotFound(f"no post with id {post_id}")
        return found

    def _from_local(self, post_id: int, gzip: bool, watcher: watch.Watcher) -> Stored | None:
        """The page from the machine's copy, if no write changed it since it was kept there
        (the watcher tells: app/watch.py). Where it is, the copy's own index remembers."""
        assert self._local is not None
        since = watcher.kept_since(post_id)
        if since is None:  # a version heard of, its notice not yet
            return None
        kept = self._local.get(post_id, gzip, watcher.version, since)
        if kept is None:
            return None
        return Stored(post_id, kept.slug, kept.status, kept.page, kept.etag)

    def _memo_at(self, version: int) -> None:
        """The kept pages hold for this content version: any other drops them all."""
        if version != self._memo_version:
            self._memo, self._memo_version, self._memo_bytes = {}, version, 0
            self._places.clear()

    def _keep(self, found: Stored, gzip: bool) -> None:
        size = _size(found)
        replaced = self._memo.pop((found.id, gzip), None)
        if replaced is not None:  # PostgreSQL keeps a page again after each read of it
            self._memo_bytes -= _size(replaced)
        if len(self._memo) >= MEMO_ENTRIES or self._memo_bytes + size > MEMO_BYTES:
            self._memo, self._memo_bytes = {}, 0
        self._memo[found.id, gzip] = found
        self._memo_bytes += size

    def _admit(self, post_id: int, gzip: int) -> bool:
        """PostgreSQL: whether a page read from the server goes into the machine's copy. Any,
        while the copy has room. Once it has had to let pages go, only one this worker read
        from the server before, since it last forgot them (it remembers up to
        `ASKED_ENTRIES`): a page asked for once is then not worth a write. Without this,
        readers spread evenly over more essays than the copy holds (a crawler) had nearly
        every request write a page into it that was pushed out before it was asked for again:
        100,000 essays drawn evenly, a copy of 10,000 pages: 9.6-10.0k requests/s, where no
        copy at all answered 13.5-14.4k; with this, 12.9-14.1k."""
        assert self._local is not None
        key = post_id * 2 + gzip
        if not self._local.full or key in self._asked:
            return True
        if len(self._asked) >= ASKED_ENTRIES:
            self._asked.clear()
        self._asked.add(key)
        return False

    def _fetcher(self, sql: str, gzip: int) -> "Fetch[int, Stored]":
        """PostgreSQL: reads the posts asked for meanwhile, in binary format (a bytea as its
        bytes, text as UTF-8), sending the ETag of each page kept (see the class)."""
        key_bytes = self.page_key.encode()

        async def fetch(wire: Wire, post_ids: list[int]) -> dict[int, Stored]:
            # Pages read are kept only if the version they are kept under held all along.
            version = self._memo_version
            kept = {i: self._memo.get((i, bool(gzip))) for i in post_ids}
            tags = [k.etag if k is not None else None for k in kept.values()]
            params = [_pg_array([b"%d" % i for i in kept]), _pg_array(tags)]
            found = {}
            for row in await wire.query(sql, params, binary=True):
                raw_id, slug, status, key, page, etag = row
                assert raw_id is not None and slug is not None and status is not None
                post_id = int.from_bytes(raw_id, "big", signed=True)
                if key != key_bytes:  # no page, or one from another build or site
                    none = Stored(post_id, slug.decode(), status.decode(), None, None)
                    found[post_id] = none
                    if self._memo_on and self._memo_version == version:
                        self._keep(none, bool(gzip))  # as SQLite keeps it: no query each time
                    continue
                if page is None:  # unchanged: the bytes this worker kept
                    page = kept[post_id].page  # type: ignore[union-attr]
                stored = Stored(post_id, slug.decode(), status.decode(), page, etag)
                found[post_id] = stored
                if self._memo_on and self._memo_version == version:
                    self._keep(stored, bool(gzip))
                    if self._local is not None and self._admit(post_id, gzip):
                        copy = Kept(stored.slug, stored.status, stored.etag, stored.page)
                        self._local.put_later(post_id, bool(gzip), version, copy)
            if self._local is not None:
                self._local.flush()  # the rows of this read's pages, in one transaction
            return found

        return fetch

    def _read(
        self, post_id: int, gzip: bool, version: int | None = None, wait: bool = True
    ) -> Stored:
        """SQLite: the stored page as of now, or (with the content version just read) in the
        read transaction held for that version (`app/heldreads.py`): its bytes from the pack
        file where they are packed (`app/pagepack.py`), else from its `essay_pages` row.
        With `wait` False, raises `pagepack.Cold` rather than wait for the disk."""
        if self._packs is not None:
            packed = self._packed(post_id, version)
            if packed is not None:
                ours, slug, etag, name, at, html_len, gzip_len = packed
                if not ours:
                    return Stored(post_id, slug, STATUS_PUBLISHED, None, None)
                start, length = (at + html_len, gzip_len) if gzip else (at, html_len)
                page = self._packs.read(name, start, length, wait)
                if page is not None:
                    return Stored(post_id, slug, STATUS_PUBLISHED, page, etag)
        return self._unpacked(post_id, gzip, version)

    def _unpacked(self, post_id: int, gzip: bool, version: int | None) -> Stored:
        """SQLite: the stored page from its `essay_pages` row (not packed, or its file gone)."""
        row = self._fetchone(STORED_GZIP_SQL if gzip else STORED_SQL, post_id, version)
        if row is None:  # no stored page (unknown, withdrawn, not stored yet): the route says
            return Stored(post_id, "", "", None, None)
        key, slug, etag, page = row  # a row is a published post's (`EssayPage`)
        if key != self.page_key:
            return Stored(post_id, slug, STATUS_PUBLISHED, None, None)
        return Stored(post_id, slug, STATUS_PUBLISHED, page, etag.encode())

    def _packed(self, post_id: int, version: int | None) -> Any:
        """SQLite: where a page's bytes are (`pagepack.Places.row`), as read under this content
        version (kept by the memo's rule), or None: not packed."""
        packed = self._places.get(post_id) if version is not None else None
        if packed is None:
            row = self._fetchone(pagepack.PACKED_SQL, post_id, version)
            if row is not None:
                packed = self._places.row(post_id, row, keep=version is not None)
        return packed

    async def _read_waiting(self, post_id: int, gzip: bool) -> Stored:
        """SQLite: the page `get_now` found on disk, its bytes read in a thread, while this
        worker answers the pages in memory."""
        assert self._packs is not None and self._versions is not None
        version = self._now()
        packed = self._packed(post_id, version)
        if packed is None:  # not packed (any more): its row has it
            return self._unpacked(post_id, gzip, version)
        ours, slug, etag, name, at, html_len, gzip_len = packed
        if not ours:
            return Stored(post_id, slug, STATUS_PUBLISHED, None, None)
        start, length = (at + html_len, gzip_len) if gzip else (at, html_len)
        page = await self._packs.read_waiting(name, start, length)
        if page is None:  # its file gone or short: its row has it, as of now
            return self._unpacked(post_id, gzip, self._now())
        found = Stored(post_id, slug, STATUS_PUBLISHED, page, etag)
        if self._memo_version == version:  # nothing written meanwhile: kept, as `get_now` does
            self._keep(found, gzip)
        return found

    def _now(self) -> int:
        """SQLite: the content version now, the memo held for it."""
        assert self._versions is not None
        version = self._versions.read_now()
        assert version is not None  # SQLite always knows now
        self._memo_at(version)
        return version

    def _fetchone(self, sql: str, post_id: int, version: int | None) -> Any:
        try:
            if version is None:
                return db.sqlite_reader(self.engine).execute(sql, (post_id,)).fetchone()
            return self._held.fetchone(sql, (post_id,), version)
        except sqlite3.Error as exc:
            db.forget_sqlite_reader(self.engine)
            self._held.close()
            raise OperationalError(sql, (post_id,), exc) from exc  # answered 503 like any

    async def close(self) -> None:
        if self._packs is not None:
            self._packs.close()
        for reader in self._pg or ():
            await reader.close()
        if self._watched:
            await watch.close(self.engine)
        if self._versions is not None:
            await self._versions.close()
        self._held.close()
        if self._local is not None:
            self._local.close()


def _size(found: Stored) -> int:
    return len(found.page or b"") + 200  # about what a kept page holds


def _pg_array(items: list[bytes | None]) -> bytes:
    """A PostgreSQL array in text format: each element quoted (a backslash before `"` and `\\`),
    NULL for None."""
    quoted = (
        b"NULL" if v is None else b'"' + v.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        for v in items
    )
    return b"{" + b",".join(quoted) + b"}"


def _view(session: Session, post_id: int) -> "PostView":
    """The post with its minds, tags and stories: what its post-only HTML is rendered from."""
    from app import posts  # the post service imports this module

    return posts.load_views(session, [posts.get_post(session, post_id)])[0]


def render(session: Session, renderer: Renderer, post: PageRow) -> str:
    """The whole page of a published post, the site URL a placeholder (`Renderer.finish`)."""
    around = context(session, post)
    parts = renderer.parts(post.page_html, lambda: _view(session, post.id))
    return renderer.page(
        post=post,
        parts=parts,
        older=around.older,
        newer=around.newer,
        minds=around.minds,
        absent=around.absent,
        canonical_path=post_path(post),  # type: ignore[arg-type]
    )


def neighbours(session: Session, post_ids: set[int]) -> set[int]:
    """The published essays just older and just newer than each of these posts."""
    found: set[int] = set()
    for post_id, published_at in session.execute(_NEIGHBOURS, {"ids": list(post_ids)}).all():
        rows = session.execute(_CONTEXT, {"at": published_at, "pid": post_id}).all()
        found.update(int(row[1]) for row in rows if row[0] != 0 and row[1] is not None)
    return found


def store_pages(session: Session, renderer: Renderer, post_ids: set[int]) -> None:
    """Render and store the pages of these posts (in the caller's transaction), and on SQLite
    pack them (`app/pagepack.py`); a post that is not published loses its stored page."""
    packed: list[pagepack.Page] = []
    for post_id in sorted(post_ids):
        try:
            post = page_row(session, post_id)
        except PostNotFound:
            continue
        session.execute(delete(EssayPage).where(E.post_id == post_id))
        if post.status != STATUS_PUBLISHED:
            continue
        if post.page_html is None or not post.page_html.startswith(renderer.key):
            # The post-only part is from another build too: store a current one with it.
            post = replace(post, page_html=renderer(_view(session, post_id)))
            session.execute(update(Post).where(P.id == post_id).values(page_html=post.page_html))
        html = renderer.finish(render(session, renderer, post))
        body = html.encode()
        etag = f'W/"p{hashlib.sha256(body).hexdigest()[:24]}"'  # the header, made once
        gzipped = gzip.compress(body, compresslevel=9, mtime=0)
        session.execute(
            insert(EssayPage).values(
                post_id=post_id,
                key=renderer.page_key,
                slug=post.slug,
                etag=etag,
                gzip=gzipped,
                html=html,
            )
        )
        packed.append(pagepack.Page(post_id, renderer.page_key, post.slug, etag, body, gzipped))
    pagepack.store(session, sorted(post_ids), packed)
    watch.note_pages(session, post_ids)  # named in the write's notice (PostgreSQL)


def drop_pages(session: Session, post_ids: set[int]) -> None:
    session.execute(delete(EssayPage).where(E.post_id.in_(list(post_ids))))
    pagepack.drop(session, sorted(post_ids))
    watch.note_pages(session, post_ids)


def refresh_all(
    engine: Engine, renderer: Renderer, *, everything: bool = False, batch: int = 200
) -> Iterator[int]:
    """Store the page of every published essay that has none from this build (or, on SQLite,
    is not packed: `app/pagepack.py`), or of every one with `everything`, a batch per write
    transaction, so writers queue for moments, never minutes. Yields the number stored after
    each batch. On SQLite, with `everything`, or when the pack files would otherwise hold more
    left-behind bytes than pages in use (`pagepack.worth_compacting`), the pages go into a new
    pack file (those of this build copied from their stored bytes, no render), and then the
    files no page is in any more are removed."""
    from app import posts  # the post service imports this module
    from app.db import write_session

    where = pagepack.folder(engine)
    current = E.key == renderer.page_key
    unpacked = K.post_id.is_(None) if where is not None else literal(False)
    compacting = where is not None and (
        everything or pagepack.worth_compacting(engine, renderer.page_key)
    )
    after = 0
    if compacting:
        assert where is not None
        newest = pagepack.start_file(where)
    if where is not None and not everything:
        # Pages of this build not packed (or, compacting, not in the new file): their stored
        # bytes, not a render.
        older_than = newest if compacting else ""
        while True:
            with write_session(engine) as session:
                posts.serialize_writers(session)
                if after == 0:
                    pagepack.forget_missing(session)  # a copy without its folder: pack again
                packed = pagepack.pack_stored(session, renderer.page_key, after, batch, older_than)
                session.commit()
            if not packed:
                break
            after = packed[-1]
            yield len(packed)
        after = 0
    while True:
        with write_session(engine) as session:
            wanted = (
                select(P.id)
                .select_from(P)
                .outerjoin(E, E.post_id == P.id)
                .outerjoin(K, K.post_id == P.id)
                .where(P.status == STATUS_PUBLISHED, P.id > after)
                .order_by(P.id)
                .limit(batch)
            )
            if not everything:
                wanted = wanted.where(or_(E.post_id.is_(None), ~current, unpacked))
            posts.serialize_writers(session)  # the API may be writing neighbouring pages
            ids = list(session.execute(wanted).scalars())
            if not ids:
                break
            store_pages(session, renderer, set(ids))
            session.commit()
        after = ids[-1]
        yield len(ids)
    if compacting:
        pagepack.remove_unused(engine)
