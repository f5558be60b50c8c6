"""The essay page's reads: three small statements whatever the archive's size.

1. the content version (the ETag, in `routes.reader.cached`), 2. the post's own columns with its
stored page HTML (`app/fragments.py`), 3. the older and newer essays (id, slug, title only, each
an index seek on (status, published_at, id)) together with the minds of all three posts, in one
UNION ALL. No ORM objects, no bodies of the neighbours.
"""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, bindparam, literal, null, select, tuple_, union_all
from sqlmodel import Session

from app.errors import PostNotFound
from app.models import STATUS_PUBLISHED, Mind, Post

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
