"""Guards that are not timings: SQL statement counts stay flat as the archive grows (no N+1),
and the hot queries of the post service walk an index instead of scanning `posts`."""

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import SITE_URL, add_post, sample_input
from conftest import test_settings as make_settings
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, text
from sqlmodel import Session

from app import browse, db, essaypage, feeds, pagepack, posts, sitemap
from app.db import write_session
from app.fragments import Render
from app.main import create_app

START = datetime(2025, 1, 6, 15, 0, tzinfo=UTC)
# Pages of the reader, feeds and API; a path still answering 404 is not built on this branch.
PAGES = [
    "/",
    "{essay}",
    "/archive",
    "/archive/2025/01",
    "/tags/qqq",
    "/stories/narrow-leadership",
    "/search?q=breadth",
    "/search?q=%22the+index%22",
    "/search?q=breadth&page=2",
    "/feed.xml",
    "/atom.xml",
    "/feed.json",
    "/sitemap.xml",
    "/tags/qqq/feed.xml",
    "/tags/qqq/atom.xml",
    "/tags/qqq/feed.json",
    "/stories/narrow-leadership/feed.xml",
    "/stories/narrow-leadership/atom.xml",
    "/stories/narrow-leadership/feed.json",
    "/robots.txt",
    "/api/v1/posts",
    "/api/v1/posts?limit=3",
]


@contextmanager
def recorded(engine: Engine, app: Any = None) -> Iterator[list[tuple[str, Any]]]:
    """Every statement (and its parameters) the engine sends while the block runs, and those
    the app's stored-page reader sends past the engine."""
    statements: list[tuple[str, Any]] = []

    def listener(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", listener)
    # The short reads the event loop makes on SQLite bypass the engine (app/db.sqlite_reader).
    raw = db.sqlite_reader(engine) if engine.dialect.name == "sqlite" else None
    if raw is not None:
        raw.set_trace_callback(lambda statement: statements.append((statement, None)))
    # On PostgreSQL they go through their own connections (app/pgshared.py).
    shared = list(app.state.stored_pages._pg or ()) if app is not None else []
    fetches = [reader.fetch for reader in shared]
    for reader, fetch in zip(shared, fetches, strict=True):

        async def counted(conn: Any, keys: list[Any], fetch: Any = fetch) -> Any:
            statements.append((essaypage.STORED_MANY_SQL, keys))
            return await fetch(conn, keys)

        reader.fetch = counted
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", listener)
        if raw is not None:
            raw.set_trace_callback(None)
        for reader, fetch in zip(shared, fetches, strict=True):
            reader.fetch = fetch


def _fill(engine: Engine, start: int, stop: int, render: Render | None = None) -> list[posts.Post]:
    """Posts through the service; with `render`, as the API writes them (stored page HTML)."""
    created = []
    for i in range(start, stop):
        data = sample_input(
            cycle=1000 + i,
            title=f"Essay {i}: breadth and the index",
            published_at=(START + timedelta(hours=6 * i)).isoformat(),
        )
        with write_session(engine) as session:
            post = posts.create_post(session, data, "Workshop", render=render).post
            session.expunge(post)
        created.append(post)
    return created


def _counts(client: TestClient, engine: Engine, essay: str) -> dict[str, int]:
    app = client.app.fastapi  # type: ignore[attr-defined]
    counts: dict[str, int] = {}
    for template in PAGES:
        path = template.format(essay=essay)
        if client.get(path).status_code == 404:  # also warms the pool and first-use queries
            continue
        with recorded(engine, app) as statements:
            response = client.get(path)
        assert response.status_code == 200, path
        counts[template] = len(statements)
    return counts


def test_statement_counts_do_not_grow_with_the_archive(database_url):
    app = create_app(make_settings(database_url, response_cache=False, page_size=20))
    engine = app.state.engine
    try:
        with TestClient(app, base_url=SITE_URL, follow_redirects=False) as client:
            few = _fill(engine, 0, 5, app.state.renderer)
            essay = f"/read/{few[2].id}/{few[2].slug}"
            small = _counts(client, engine, essay)
            _fill(engine, 5, 40, app.state.renderer)  # more than one page, and on every page
            large = _counts(client, engine, essay)
            # The essay page reads its stored copy (app/essaypage.py): one SELECT, of the
            # page's pack row on SQLite (app/pagepack.py).
            with recorded(engine, app) as statements:
                assert client.get(essay).status_code == 200
            # Without a stored copy it renders live: that lookup (before routing; on SQLite
            # the pack row's, then the page's), the content version, the post's row, and its
            # neighbours with the minds: four SELECTs (five on SQLite), whatever the size.
            sqlite = engine.dialect.name == "sqlite"
            with write_session(engine) as session:
                essaypage.drop_pages(session, {few[2].id})  # type: ignore[arg-type]
                session.commit()
            with recorded(engine, app) as live:
                assert client.get(essay).status_code == 200
    finally:
        engine.dispose()
    assert {"/", "{essay}", "/feed.xml", "/sitemap.xml", "/archive"} <= set(small)
    assert large == small
    selects = [s for s, _ in statements if s.lstrip().upper().startswith("SELECT")]
    table = "essay_packs" if sqlite else "essay_pages"
    assert len(selects) == 1 and table in selects[0], selects
    live_selects = [s for s, _ in live if s.lstrip().upper().startswith("SELECT")]
    assert len(live_selects) == 4 + sqlite, live_selects


# --- query plans ------------------------------------------------------------------------------

PlanCheck = Callable[[Session, posts.Post], object]

HOT_QUERIES: dict[str, PlanCheck] = {
    "list_published": lambda s, p: posts.list_published(s, 20),
    "list_published after a cursor": lambda s, p: posts.list_published(
        s,
        20,
        before=(p.published_at, p.id),  # type: ignore[arg-type]
    ),
    "neighbours": lambda s, p: posts.neighbours(s, p),
    "load_views": lambda s, p: posts.load_views(s, posts.list_published(s, 20)),
    "cycle lookup": lambda s, p: posts.post_id_for_cycle(s, p.cycle),  # type: ignore[arg-type]
    "essay page row": lambda s, p: essaypage.page_row(s, p.id),  # type: ignore[arg-type]
    "essay stored page": lambda s, p: _stored_page(s, p.id),  # type: ignore[arg-type]
    "essay neighbours and minds": lambda s, p: essaypage.context(s, _page_row(p)),
    "home page, older": lambda s, p: browse.newest(s, 20, before=_cursor(p)),
    "home page, newer": lambda s, p: browse.newest(s, 20, after=_cursor(p)),
    "archive month, later": lambda s, p: browse.month_entries(
        s, p.published_at.year, p.published_at.month, UTC, 20, after=_cursor(p)
    ),
    "a tag feed's last withdrawal": lambda s, p: feeds.last_withdrawn(
        s, feeds.resolve_scope(s, "tag", "qqq")
    ),
}
# Queries that start from a key must seek to it, not walk the index from one end.
SEEKS_PUBLISHED_AT = {
    "list_published after a cursor",
    "neighbours",
    "essay neighbours and minds",
    "home page, older",
    "home page, newer",
    "archive month, later",
}


# Queries that must start from the deleted essays (few), not from a tag's links: a common tag
# has tens of thousands, and each would be a read of its essay's row.
STARTS_FROM_STATUS = {"a tag feed's last withdrawal"}


def _stored_page(session: Session, post_id: int) -> None:
    """The statements the stored-page reader sends: SQLite's three (the pack row, and the page's
    row in either encoding), PostgreSQL's shared one."""
    if session.get_bind().dialect.name == "sqlite":
        for sql in (pagepack.PACKED_SQL, essaypage.STORED_SQL, essaypage.STORED_GZIP_SQL):
            session.connection().exec_driver_sql(sql, (post_id,))
    else:
        many = essaypage.STORED_MANY_SQL.replace("$1", ":ids").replace("$2", ":tags")
        session.execute(text(many), {"ids": [post_id], "tags": [None]})


def _cursor(post: posts.Post) -> str:
    return browse.encode_cursor(
        browse.Entry(post.id, post.slug, post.title, post.published_at, None)
    )  # type: ignore[arg-type]


def _page_row(post: posts.Post) -> essaypage.PageRow:
    return essaypage.PageRow(
        post.id,  # type: ignore[arg-type]
        post.slug,
        post.status,
        post.title,
        post.excerpt,
        post.published_at,
        post.debate_outcome,
        post.page_html,
    )


def _plan(engine: Engine, statement: str, parameters: Any) -> str:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            return "\n".join(str(row[-1]) for row in rows)
        # A tiny table is cheaper to scan; forbid that so the planner shows the index it can use.
        conn.exec_driver_sql("SET enable_seqscan = off")
        rows = conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).all()
        return "\n".join(str(row[0]) for row in rows)


def _scans(engine: Engine, plan: str) -> list[str]:
    if engine.dialect.name == "sqlite":
        # "SCAN t" reads a whole table; "SEARCH t USING ..." or "SCAN t USING INDEX" do not.
        # A SCAN of a subquery (anon_N: one row from a LIMIT 1 co-routine) reads no table.
        found = re.findall(r"^SCAN (\w+)(?! USING)", plan, flags=re.M)
        return [name for name in found if not re.fullmatch(r"anon_\d+", name)]
    return re.findall(r"Seq Scan on (\w+)", plan)


def _seeks_published_at(engine: Engine, plan: str) -> bool:
    if engine.dialect.name == "sqlite":
        return bool(
            re.search(r"SEARCH posts USING .*INDEX \w+ \(status=\? AND .*published_at", plan)
        )
    return bool(re.search(r"Index Cond: .*published_at", plan))


@pytest.mark.parametrize("name", HOT_QUERIES)
def test_hot_queries_use_an_index(engine, name):
    created = _fill(engine, 0, 30)
    middle = created[15]
    with Session(engine) as session:
        post = posts.get_post(session, middle.id)  # type: ignore[arg-type]
        with recorded(engine) as statements:
            HOT_QUERIES[name](session, post)
    queries = [(s, p) for s, p in statements if s.lstrip().upper().startswith("SELECT")]
    assert queries
    for statement, parameters in queries:
        plan = _plan(engine, statement, parameters)
        assert _scans(engine, plan) == [], f"{name}: {statement}\n{plan}"
        if name in SEEKS_PUBLISHED_AT and "FROM posts" in statement:
            assert _seeks_published_at(engine, plan), f"{name}: {statement}\n{plan}"
        if name in STARTS_FROM_STATUS and "max(posts.updated_at)" in statement:
            # SQLite's outer loop is the first line; PostgreSQL picks by its statistics.
            outer = plan.splitlines()[0]
            if engine.dialect.name == "sqlite":
                assert re.match(r"SEARCH posts USING .*INDEX \w+ \(status=\?", outer), plan


def test_keyset_order_is_exact_with_equal_times(engine):
    """The row-value key binds through the column types: ties on published_at break by id."""
    same = (START + timedelta(days=3)).isoformat()
    created = _fill(engine, 0, 4) + [
        add_post(engine, cycle=2000 + i, title=f"Tie {i}", published_at=same) for i in range(3)
    ]
    with Session(engine) as session:
        newest_first = posts.list_published(session, 100)
        expected = sorted(created, key=lambda p: (p.published_at, p.id), reverse=True)
        assert [p.id for p in newest_first] == [p.id for p in expected]
        for i, post in enumerate(newest_first):
            after = posts.list_published(session, 2, before=(post.published_at, post.id))  # type: ignore[arg-type]
            assert [p.id for p in after] == [p.id for p in newest_first[i + 1 : i + 3]]
            older, newer = posts.neighbours(session, post)
            assert older == (newest_first[i + 1] if i + 1 < len(newest_first) else None)
            assert newer == (newest_first[i - 1] if i > 0 else None)


@pytest.mark.parametrize("path", ["/archive", "/sitemap.xml", "/sitemaps/pages-0.xml"])
def test_whole_archive_figures_are_computed_once_per_version(database_url, monkeypatch, path):
    """Month counts and sitemap lastmods read every essay: each worker computes them once per
    content version (app/derived.py), even with the response cache off, and again after a write."""
    monkeypatch.setattr(sitemap, "MAX_URLS", 3)  # the sitemap is an index, by chunks
    app = create_app(make_settings(database_url, response_cache=False))
    engine = app.state.engine
    try:
        with TestClient(app, base_url=SITE_URL, follow_redirects=False) as client:
            _fill(engine, 0, 8, app.state.renderer)
            first = client.get(path)
            with recorded(engine, app) as statements:
                again = client.get(path)
            _fill(engine, 200, 201, app.state.renderer)  # in a month of its own
            after_write = client.get(path)
    finally:
        engine.dispose()
    assert again.text == first.text
    touched = [s for s, _ in statements if "posts" in s]
    assert touched == [], touched  # only the content version was read
    assert after_write.text != first.text
