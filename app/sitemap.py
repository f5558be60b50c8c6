"""Sitemaps (sitemaps.org protocol), streamed: posts, tags and stories are read in keyset batches
of a few columns, so a site of any size is served in constant memory.

Up to MAX_URLS addresses `/sitemap.xml` is one `<urlset>`; past that it is a `<sitemapindex>`
pointing at `/sitemaps/{section}-{n}.xml`, where chunk n of a section holds the rows whose id is in
[n * MAX_URLS, (n + 1) * MAX_URLS): fixed id ranges, so every chunk is a cheap range scan and never
exceeds the protocol's limit, however many rows were deleted or imported with gaps.
"""

import io
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import XMLGenerator
from xml.sax.xmlreader import AttributesImpl
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, case, func, literal, literal_column, select
from sqlmodel import Session, col

from app import derived, urls
from app.config import Settings
from app.errors import SitemapNotFound
from app.models import STATUS_PUBLISHED, Post, PostStory, PostTag, Revision, Story, Tag

NS = "http://www.sitemaps.org/schemas/sitemap/0.9"
# Addresses per file. The protocol allows 50,000, but such a file is ~7 MB: too big for the
# response cache (1 MiB per answer), so every fetch streamed it again, and 32 crawlers at once
# stalled a worker (benchmark, 10,000 essays). 5,000 keep a file near 0.7 MB, cached, built in
# tens of milliseconds. Tests lower it.
MAX_URLS = 5_000
BATCH = 1000
SECTIONS = ("posts", "tags", "stories", "pages")

Row = tuple[str, datetime | None]  # (site path, lastmod)
published: Any = Post.status == STATUS_PUBLISHED
# In a GROUP BY: 1 when the group holds at least one published essay (it is listed), else 0.
_listed: Any = func.max(case((published, 1), else_=0))
_any_published: Any = _listed == 1
# SQLModel types columns as plain values; the queries below use them as SQL expressions.
P: Any = Post
MAX_ID = 2**31 - 1  # ids are 32-bit integers; PostgreSQL refuses larger parameters


def _in_range(column: Any, lo: int, hi: int) -> Any:
    """lo <= column < hi, leaving out bounds that no id can cross."""
    if hi > MAX_ID:
        return column >= lo
    return (column >= lo) & (column < hi)


def _w3c(instant: datetime) -> str:
    return instant.replace(microsecond=0).isoformat()


# --- rows -------------------------------------------------------------------------------------


def _post_rows(session: Session, lo: int, hi: int) -> Iterator[Row]:
    after = lo - 1
    while True:
        batch = session.execute(
            select(P.id, P.slug, P.updated_at)
            .where(published, P.id > after, _in_range(P.id, lo, hi))
            .order_by(P.id)
            .limit(BATCH)
        ).all()
        for post_id, slug, updated_at in batch:
            yield f"/read/{post_id}/{slug}", updated_at
        if len(batch) < BATCH:
            return
        after = batch[-1][0]


def _group_rows(session: Session, kind: str, lo: int, hi: int) -> Iterator[Row]:
    """Tags or stories that list at least one published essay, lastmod = the newest change of
    their essays, deleted ones included, or the last edit that took one off them (a page changes
    when an essay leaves it)."""
    table: Any = Tag if kind == "tags" else Story
    link: Any = PostTag if kind == "tags" else PostStory
    owner = link.tag_id if kind == "tags" else link.story_id
    path = urls.tag_path if kind == "tags" else urls.story_path
    after = lo - 1
    while True:
        batch = session.execute(
            select(table.id, table.slug, func.max(P.updated_at), table.left_at)
            .join(link, owner == table.id)
            .join(Post, P.id + 0 == link.post_id)  # as in `_chunks_now`: 1.9 -> 0.2 s for tags
            .where(table.id > after, _in_range(table.id, lo, hi))
            .group_by(table.id, table.slug, table.left_at)
            .having(_any_published)
            .order_by(table.id)
            .limit(BATCH)
        ).all()
        for _, slug, newest, left_at in batch:
            yield path(slug), newest if left_at is None else max(newest, left_at)
        if len(batch) < BATCH:
            return
        after = batch[-1][0]


def _month_lastmods(
    session: Session, tz: ZoneInfo
) -> tuple[dict[tuple[int, int], datetime], datetime | None]:
    """Newest change per archive month that lists a published essay (in the site's timezone,
    like the archive pages), deleted essays' changes and edits that moved an essay out of the
    month included; and the newest change of all.

    The database groups the essays by month, with the months' bounds in UTC worked out here
    (the time zone's rules stay in Python): one pass over `ix_posts_sitemap`, which holds every
    column it reads. 100,000 essays: 0.8 s when each essay's row came back to Python."""
    first, last = session.execute(select(func.min(P.published_at), func.max(P.published_at))).one()
    months: dict[tuple[int, int], datetime] = {}
    listed: set[tuple[int, int]] = set()
    if first is not None:
        keys, starts = _months_between(first, last, tz)
        query = select(literal(0), func.max(P.updated_at), _listed)  # one month
        if len(starts) > 1:
            # The first month whose successor starts after the essay: CASE tries them in order.
            month = case(
                *((P.published_at < start, n) for n, start in enumerate(starts[1:])),
                else_=len(starts) - 1,
            )
            query = select(month, func.max(P.updated_at), _listed).group_by(month)
        for n, newest, listed_here in session.execute(query):
            months[keys[n]] = newest
            if listed_here:
                listed.add(keys[n])
    for published_at, left_at in _moves(session):  # months that essays left by an edit
        local = published_at.astimezone(tz)
        key = (local.year, local.month)
        if key not in months or months[key] < left_at:
            months[key] = left_at
    newest = max(months.values(), default=None)
    return {key: months[key] for key in listed}, newest


def _months_between(
    first: datetime, last: datetime, tz: ZoneInfo
) -> tuple[list[tuple[int, int]], list[datetime]]:
    """The local months from `first`'s to `last`'s, and the UTC instant each one starts."""
    keys: list[tuple[int, int]] = []
    starts: list[datetime] = []
    local, end = first.astimezone(tz), last.astimezone(tz)
    year, month = local.year, local.month
    while (year, month) <= (end.year, end.month):
        keys.append((year, month))
        starts.append(datetime(year, month, 1, tzinfo=tz).astimezone(UTC))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return keys, starts


def _moves(session: Session) -> Iterator[tuple[datetime, datetime]]:
    """(where an essay was in time, when an edit changed it) for every revision that says."""
    after = 0
    while True:
        batch = session.execute(
            select(col(Revision.id), col(Revision.published_at), col(Revision.created_at))
            .where(col(Revision.published_at).is_not(None), col(Revision.id) > after)
            .order_by(col(Revision.id))
            .limit(BATCH)
        ).all()
        for _, published_at, created_at in batch:
            yield published_at, created_at
        if len(batch) < BATCH:
            return
        after = batch[-1][0]


def _page_rows(session: Session, tz: ZoneInfo) -> Iterator[Row]:
    months, newest = derived.at_version(
        session, ("sitemap months", tz.key), lambda: _month_lastmods(session, tz)
    )
    yield "/", newest
    if months:
        yield "/archive", newest
    for (year, month), lastmod in sorted(months.items(), reverse=True):
        yield f"/archive/{year:04d}/{month:02d}", lastmod


def _rows(session: Session, settings: Settings, section: str, chunk: int | None) -> Iterator[Row]:
    lo, hi = (0, MAX_ID + 1) if chunk is None else (chunk * MAX_URLS, (chunk + 1) * MAX_URLS)
    if section == "posts":
        yield from _post_rows(session, lo, hi)
    elif section in ("tags", "stories"):
        yield from _group_rows(session, section, lo, hi)
    elif section == "pages":
        yield from _page_rows(session, settings.tz)


# --- counting and the index -------------------------------------------------------------------


def url_count(session: Session) -> int:
    return derived.at_version(session, ("sitemap urls", MAX_URLS), lambda: _url_count(session))


def _url_count(session: Session) -> int:
    """How many addresses the whole site map holds (pages are few and counted generously), or
    more than MAX_URLS once the essays alone pass it: counting stops there (a full count of a
    100,000-essay archive and its tags cost a third of a second per sitemap index)."""
    enough = select(P.id).where(published).limit(MAX_URLS + 1).subquery()
    posts_n = session.execute(select(func.count()).select_from(enough)).scalar_one()
    if posts_n > MAX_URLS:
        return int(posts_n)
    total = int(posts_n)
    for link, owner in ((PostTag, PostTag.tag_id), (PostStory, PostStory.story_id)):
        total += int(
            session.execute(
                select(func.count(func.distinct(owner)))
                .join(Post, P.id == link.post_id)
                .where(published)
            ).scalar_one()
        )
    # Archive months: at most one per month of the site's life; bound it by the posts.
    return total + 2 + min(int(posts_n), 12 * 200)


def _chunks(session: Session, section: str) -> list[tuple[int, datetime | None]]:
    """(chunk number, lastmod) for every non-empty chunk of `section`."""
    return derived.at_version(
        session, ("sitemap chunks", section, MAX_URLS), lambda: _chunks_now(session, section)
    )


def _chunks_now(session: Session, section: str) -> list[tuple[int, datetime | None]]:
    # A chunk's lastmod counts its deleted essays' changes too (its pages lost them then).
    if section == "pages":
        newest = session.execute(select(func.max(P.updated_at))).scalar()
        return [(0, newest)]
    # The divisor is inlined: PostgreSQL only matches the GROUP BY expression with the SELECT
    # one when both are literally the same, and two bound parameters are not.
    size: Any = literal_column(str(int(MAX_URLS)))
    if section == "posts":
        bucket: Any = P.id // size
        query = select(bucket, func.max(P.updated_at))
    else:
        link: Any = PostTag if section == "tags" else PostStory
        bucket = (link.tag_id if section == "tags" else link.story_id) // size
        # `+ 0` keeps SQLite from looking each link's essay up by id (a read of its row per
        # link: 0.7 s warm, 6.8 s cold for 100,000 essays' tags): it walks ix_posts_sitemap,
        # which holds the status and the change time, and finds each essay's links by their
        # key instead (0.1 s). PostgreSQL hashes the join either way.
        query = select(bucket, func.max(P.updated_at)).join(Post, P.id + 0 == link.post_id)
    rows = session.execute(query.group_by(bucket).having(_any_published).order_by(bucket)).all()
    chunks = {int(n): lastmod for n, lastmod in rows}
    if section in ("tags", "stories"):  # and the edits that took an essay off one of them
        table: Any = Tag if section == "tags" else Story
        left = table.id // size
        for n, left_at in session.execute(
            select(left, func.max(table.left_at)).where(table.left_at.is_not(None)).group_by(left)
        ):
            if int(n) in chunks and chunks[int(n)] < left_at:
                chunks[int(n)] = left_at
    return sorted(chunks.items())


def child_path(section: str, chunk: int) -> str:
    return f"/sitemaps/{section}-{chunk}.xml"


def check_child(section: str, chunk: int) -> None:
    too_far = chunk * MAX_URLS > MAX_ID  # no id can be there; keeps SQL parameters in range
    if section not in SECTIONS or chunk < 0 or too_far or (section == "pages" and chunk != 0):
        raise SitemapNotFound(f"no sitemap {section}-{chunk}")


# --- XML --------------------------------------------------------------------------------------


class _Writer:
    """XMLGenerator (the standard library's escaping XML writer) into a buffer we drain."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        self.xml = XMLGenerator(self.buffer, encoding="utf-8", short_empty_elements=True)

    def element(self, name: str, text: str) -> None:
        self.xml.startElement(name, AttributesImpl({}))
        self.xml.characters(text)
        self.xml.endElement(name)

    def drain(self) -> bytes:
        data = self.buffer.getvalue()
        self.buffer.seek(0)
        self.buffer.truncate()
        return data.encode()


def _document(root: str, child: str, entries: Iterable[Row], settings: Settings) -> Iterator[bytes]:
    w = _Writer()
    w.xml.startDocument()
    w.xml.startElement(root, AttributesImpl({"xmlns": NS}))
    for n, (path, lastmod) in enumerate(entries, 1):
        w.xml.startElement(child, AttributesImpl({}))
        w.element("loc", urls.absolute(settings, path))
        if lastmod is not None:
            w.element("lastmod", _w3c(lastmod))
        w.xml.endElement(child)
        if n % BATCH == 0:
            yield w.drain()
    w.xml.endElement(root)
    w.xml.endDocument()
    yield w.drain() + b"\n"


def stream(
    engine: Engine, settings: Settings, section: str | None, chunk: int | None
) -> Iterator[bytes]:
    """The document at /sitemap.xml (section None) or /sitemaps/{section}-{chunk}.xml."""
    with Session(engine) as session:
        if section is None and url_count(session) > MAX_URLS:
            index = [
                (child_path(name, n), lastmod)
                for name in SECTIONS
                for n, lastmod in _chunks(session, name)
            ]
            yield from _document("sitemapindex", "sitemap", index, settings)
            return
        names = SECTIONS if section is None else (section,)
        rows = (row for name in names for row in _rows(session, settings, name, chunk))
        yield from _document("urlset", "url", rows, settings)
