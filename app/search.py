"""Full-text search: SQLite FTS5 or PostgreSQL tsvector, kept in step by the database itself.

On SQLite an external-content FTS5 table follows `posts` through triggers; on PostgreSQL a
generated tsvector column with a GIN index does. Both are created in the migrations, so every
create, edit and delete (from any worker) updates the index in the same transaction.
"""

import html
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from markupsafe import Markup
from sqlalchemy import text
from sqlmodel import Session

from app.models import STATUS_DELETED, STATUS_PUBLISHED

SQLITE_FTS_TABLE = "posts_fts"
PG_VECTOR_COLUMN = "search_vector"


def is_search_object(name: str | None, type_: str) -> bool:
    if name is None:
        return False
    return name.startswith(SQLITE_FTS_TABLE) or name in (PG_VECTOR_COLUMN, "ix_posts_search_vector")


MAX_TERMS = 12
MAX_TERM_LENGTH = 64
# Control characters mark the highlights, so the snippet can be HTML-escaped as a whole
# (the body is raw Markdown and may hold "<script>") before the marks become <mark> elements.
# They must be characters no stored body can hold (PostIn refuses C0 controls but tab and
# newline): private-use U+E000 was allowed, so a body could forge its own <mark>.
_OPEN, _CLOSE = "\x02", "\x03"
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Query:
    terms: list[str]
    shortened: bool

    @property
    def text(self) -> str:
        return " ".join(self.terms)


@dataclass(frozen=True)
class Hit:
    id: int
    slug: str
    title: str
    published_at: datetime
    cycle: int | None
    snippet: Markup


def parse_query(raw: str) -> Query:
    """Reduce any input to plain words: FTS operators, quotes and SQL become harmless text.

    Every word must match (AND); the search engines' own syntax is never exposed, so no input
    can be a syntax error, and a 10 KB query is cut to its first MAX_TERMS words.
    """
    words = [
        w[:MAX_TERM_LENGTH]
        for w in _WORD.findall(raw[:4000])
        if w.strip("_") and w not in _OPERATOR_WORDS
    ]
    return Query(words[:MAX_TERMS], shortened=len(words) > MAX_TERMS or len(raw) > 4000)


# Written in capitals, these are the search engines' operators: a reader who types them means
# the operator, which is ignored, not a word every result must hold.
_OPERATOR_WORDS = frozenset({"AND", "OR", "NOT", "NEAR"})


_MD_LINK = re.compile(r"!?\[([^\]]*)\]\((?:[^()]|\([^()]*\))*\)")
_MD_SYNTAX = re.compile(r"[*`~]+|\[\^?|\]|(?m:^[ \t]*[#>]+)")
_MD_RULES = re.compile(r"\||:?-{3,}:?|={3,}")
_SPACE = re.compile(r"\s+")


def _highlight(raw: str) -> Markup:
    """Snippets come from the Markdown source: drop its syntax, escape, then add the marks."""
    plain = _MD_SYNTAX.sub("", _MD_LINK.sub(r"\1", raw))
    plain = _SPACE.sub(" ", _MD_RULES.sub(" ", plain)).strip()
    escaped = html.escape(plain, quote=False)
    return Markup(escaped.replace(_OPEN, "<mark>").replace(_CLOSE, "</mark>"))


def _sqlite_match(terms: list[str]) -> str:
    # Each word as an FTS5 string ("..." with quotes doubled): never an operator or column filter.
    return " ".join('"' + t.replace('"', '""') + '"' for t in terms)


# Both databases rank only the newest matches, so a common word costs what a rare one does.
SEARCH_CANDIDATES = 2000

# SQLite: rank inside the full-text index alone (bm25 over its own doclists), then read `posts`
# only for the rows shown: joining every match to `posts` first (to filter deleted essays) read
# the whole row of each match, 0.7-1 s for a common word at 100,000 essays. Only the newest
# SEARCH_CANDIDATES matches are ranked (FTS5 walks its index from the highest rowid, the newest
# id, and stops there): ranking all of them took 216 ms for a common word and 314 ms for three
# common words at 100,000 essays; this takes 6 and 15 ms.
# Deleted essays are still in the index, so the ranked window holds as many extra rows as there
# are deleted essays (a count from the status index): the page is exactly what the join gave.
# Every step orders by (score, id) alone: the window that grows page by page must be a prefix of
# the order the pages are cut from, or tied scores (common in a large archive) let an essay show
# on two pages and another on none.
_SQLITE_SEARCH = text(
    f"""
    WITH candidates AS (
        SELECT rowid AS id, bm25(posts_fts, 10.0, 1.0) AS score
        FROM posts_fts WHERE posts_fts MATCH :match
        ORDER BY rowid DESC LIMIT :candidates
    ), ranked AS (
        SELECT id, score FROM candidates ORDER BY score, id DESC LIMIT :window
    ), shown AS (
        SELECT p.id, p.slug, p.title, p.published_at, p.cycle, ranked.score
        FROM ranked JOIN posts AS p ON p.id = ranked.id
        WHERE p.status = :published
        ORDER BY ranked.score, p.id DESC
        LIMIT :limit OFFSET :offset
    )
    SELECT shown.id, shown.slug, shown.title, shown.published_at, shown.cycle,
           snippet(posts_fts, 1, '{_OPEN}', '{_CLOSE}', '…', 32) AS snip
    FROM shown JOIN posts_fts ON posts_fts.rowid = shown.id
    WHERE posts_fts MATCH :match
    ORDER BY shown.score, shown.id DESC
    """
)
_SQLITE_DELETED = text("SELECT count(*) FROM posts WHERE status = :deleted")

# PostgreSQL ranks the newest SEARCH_CANDIDATES matches: ts_rank_cd reads each match's whole
# tsvector, and ranking all 99,880 matches of a common word at 100,000 essays took 0.6 s (and 32
# such searches at once stalled the server); the newest 2,000, found by walking the
# (status, published_at, id) index back from today, take about 10 ms. Headlines are built only
# for the rows shown.
_PG_SEARCH = text(
    f"""
    SELECT p.id, p.slug, p.title, p.published_at, p.cycle,
           ts_headline('english', p.body, q.query,
                       'StartSel={_OPEN}, StopSel={_CLOSE}, MaxWords=40, MinWords=15, '
                       'MaxFragments=2, FragmentDelimiter=" … "') AS snip
    FROM (
        SELECT c.id, c.published_at, ts_rank_cd(c.search_vector, c.query) AS rank
        FROM (
            SELECT p.id, p.published_at, p.search_vector, query
            FROM posts AS p, plainto_tsquery('english', :q) AS query
            WHERE p.search_vector @@ query AND p.status = :published
            ORDER BY p.published_at DESC, p.id DESC
            LIMIT :candidates
        ) AS c
        ORDER BY rank DESC, c.published_at DESC, c.id DESC
        LIMIT :limit OFFSET :offset
    ) AS ranked
    JOIN posts AS p ON p.id = ranked.id, plainto_tsquery('english', :q) AS q(query)
    ORDER BY ranked.rank DESC, p.published_at DESC, p.id DESC
    """
)


def search(session: Session, query: Query, limit: int, offset: int = 0) -> list[Hit]:
    """Published essays matching every word, best first, with a highlighted body snippet."""
    if not query.terms:
        return []
    params = {"published": STATUS_PUBLISHED, "limit": limit, "offset": offset}
    if session.get_bind().dialect.name == "postgresql":
        pg_params = {**params, "q": query.text, "candidates": SEARCH_CANDIDATES}
        rows = session.execute(_PG_SEARCH, pg_params).all()
    else:
        match = _sqlite_match(query.terms)
        deleted = session.execute(_SQLITE_DELETED, {"deleted": STATUS_DELETED}).scalar_one()
        window = offset + limit + int(deleted)
        sqlite_params = {"match": match, "window": window, "candidates": SEARCH_CANDIDATES}
        rows = session.execute(_SQLITE_SEARCH, {**params, **sqlite_params}).all()
    return [
        Hit(r.id, r.slug, r.title, _as_instant(r.published_at), r.cycle, _highlight(r.snip or ""))
        for r in rows
    ]


def _as_instant(value: datetime | str) -> datetime:
    # Raw SQL bypasses the UTCDateTime column type; SQLite hands back naive UTC text.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
