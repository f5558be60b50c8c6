"""The essay page: stored whole at write time, served with one indexed read.

Serving (`StoredPages`): one statement reads the post's id, slug and status with its stored page
(`essay_pages`). A current stored page is the answer; its ETag was computed when it was stored.

Rendering (`render`, at write time by `store_pages`, or live for a page with no current stored
copy): 1. the post's own columns with its stored post-only HTML (`app/fragments.py`), 2. the
older and newer essays (id, slug, title only, each an index seek on (status, published_at, id))
together with the minds of all three posts, in one UNION ALL. No ORM objects, no bodies of the
neighbours. A page shows its neighbours' titles and minds, so every write refreshes the stored
pages of the posts it changed and of their neighbours before and after (`posts._refresh_pages`).
"""

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
    func,
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

from app import db
from app.errors import PostNotFound
from app.fragments import Renderer
from app.models import STATUS_PUBLISHED, EssayPage, Mind, Post
from app.pgshared import SharedReads, Wire
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
# Plain SQL with a named parameter: the same text runs on sqlite3 directly and through
# SQLAlchemy on PostgreSQL.
STORED_SQL = (
    "SELECT p.id, p.slug, p.status, e.html, e.etag FROM posts AS p"
    " LEFT JOIN essay_pages AS e ON e.post_id = p.id WHERE p.id = :pid"
)
STORED_MANY_SQL = (  # PostgreSQL, for the requests waiting together (libpq's placeholders)
    "SELECT p.id, p.slug, p.status, e.html, e.etag FROM posts AS p"
    " LEFT JOIN essay_pages AS e ON e.post_id = p.id WHERE p.id = ANY($1)"
)
_NEIGHBOURS = select(P.id, P.published_at).where(P.id.in_(bindparam("ids", expanding=True)))


@dataclass(frozen=True, slots=True)
class Stored:
    id: int
    slug: str
    status: str
    html: str | None  # the page with the renderer's key in front, or None
    etag: str | None


class StoredPages:
    """Reads a post's id, slug, status and stored page: one primary-key read. On SQLite it runs
    inline on this process's own connection (a local file: microseconds, and WAL readers never
    wait); on PostgreSQL on the event loop, shared with the requests waiting at the same time
    (`app/pgshared.py`): one statement per round trip fetches every page they asked for."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pg = None if engine.dialect.name == "sqlite" else SharedReads(engine, _fetch)

    async def get(self, post_id: int) -> Stored:
        if self._pg is not None:
            found = await self._pg.get(post_id)
        else:
            found = _read_sqlite(self.engine, post_id)
        if found is None:
            raise PostNotFound(f"no post with id {post_id}")
        return found

    async def close(self) -> None:
        if self._pg is not None:
            await self._pg.close()


def _read_sqlite(engine: Engine, post_id: int) -> Stored | None:
    params = {"pid": post_id}
    try:
        row = db.sqlite_reader(engine).execute(STORED_SQL, params).fetchone()
    except sqlite3.Error as exc:
        db.forget_sqlite_reader(engine)
        raise OperationalError(STORED_SQL, params, exc) from exc  # answered 503 like any
    return None if row is None else Stored(*row)


async def _fetch(wire: Wire, post_ids: list[int]) -> dict[int, Stored]:
    ids = b"{%s}" % b",".join(b"%d" % i for i in post_ids)  # an int[] in text format
    found = {}
    for post_id, slug, status, html, etag in await wire.query(STORED_MANY_SQL, [ids]):
        assert post_id is not None and slug is not None and status is not None  # NOT NULL
        found[int(post_id)] = Stored(
            int(post_id),
            slug.decode(),
            status.decode(),
            None if html is None else html.decode(),
            None if etag is None else etag.decode(),
        )
    return found


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
    """Render and store the pages of these posts (in the caller's transaction); a post that is
    not published loses its stored page."""
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
        html = renderer.key + render(session, renderer, post)
        etag = hashlib.sha256(html.encode()).hexdigest()[:24]
        session.execute(insert(EssayPage).values(post_id=post_id, html=html, etag=etag))


def drop_pages(session: Session, post_ids: set[int]) -> None:
    session.execute(delete(EssayPage).where(E.post_id.in_(list(post_ids))))


def refresh_all(
    engine: Engine, renderer: Renderer, *, everything: bool = False, batch: int = 200
) -> Iterator[int]:
    """Store the page of every published essay that has none from this build (or of every one,
    with `everything`), a batch per write transaction, so writers queue for moments, never
    minutes. Yields the number stored after each batch."""
    from app import posts  # the post service imports this module
    from app.db import write_session

    key = renderer.key
    current = func.substr(E.html, 1, len(key)) == key
    after = 0
    while True:
        with write_session(engine) as session:
            wanted = (
                select(P.id)
                .select_from(P)
                .outerjoin(E, E.post_id == P.id)
                .where(P.status == STATUS_PUBLISHED, P.id > after)
                .order_by(P.id)
                .limit(batch)
            )
            if not everything:
                wanted = wanted.where(or_(E.post_id.is_(None), ~current))
            posts.serialize_writers(session)  # the API may be writing neighbouring pages
            ids = list(session.execute(wanted).scalars())
            if not ids:
                return
            store_pages(session, renderer, set(ids))
            session.commit()
        after = ids[-1]
        yield len(ids)
