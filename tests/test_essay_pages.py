"""The essay page stored whole at write time (essay_pages): the same bytes as a live render,
and never stale: a write refreshes its own page and its neighbours' (their titles, links and
minds show on it), and a write without a renderer drops those pages so they render live."""

from collections.abc import Iterator

import httpx
import pytest
from conftest import SITE_URL, add_post, sample_input, start_server, stop_server
from conftest import test_settings as make_settings
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlmodel import Session

from app import essaypage, posts
from app.db import write_session
from app.fragments import Renderer
from app.main import create_app
from app.models import EssayPage, PostIn
from app.routes.reader import StoredEssayPages


@pytest.fixture
def site(database_url: str) -> Iterator[tuple[TestClient, Engine, object]]:
    app = create_app(make_settings(database_url, response_cache=False))
    with TestClient(app, base_url=SITE_URL, follow_redirects=False) as client:
        yield client, app.state.engine, app.state.renderer
    app.state.engine.dispose()


def _create(engine: Engine, renderer: object, n: int, **overrides: object) -> posts.Post:
    data = sample_input(
        title=f"Essay {n} on Breadth",
        cycle=900 + n,
        published_at=f"2026-04-{n:02d}T15:04:00Z",
        **overrides,
    )
    with write_session(engine) as session:
        post = posts.create_post(session, data, "Workshop", render=renderer).post  # type: ignore[arg-type]
        session.expunge(post)
        return post


def _stored_ids(engine: Engine) -> set[int]:
    with Session(engine) as session:
        return set(session.execute(select(EssayPage.post_id)).scalars())  # type: ignore[arg-type]


def _page(client: TestClient, post: posts.Post) -> str:
    answer = client.get(f"/read/{post.id}/{post.slug}")
    assert answer.status_code == 200
    return answer.text


def test_a_stored_page_is_byte_for_byte_the_live_render(site) -> None:
    client, engine, renderer = site
    made = [_create(engine, renderer, n) for n in (1, 2, 3)]
    assert _stored_ids(engine) == {p.id for p in made}
    stored = {p.id: client.get(f"/read/{p.id}/{p.slug}") for p in made}
    with write_session(engine) as session:
        essaypage.drop_pages(session, {p.id for p in made})  # type: ignore[misc]
        session.commit()
    for post in made:
        live = client.get(f"/read/{post.id}/{post.slug}")
        assert live.text == stored[post.id].text
        assert stored[post.id].headers["etag"].startswith('W/"p')  # the stored page's own tag
        assert live.headers["etag"] != stored[post.id].headers["etag"]


def test_the_stored_page_answers_conditional_requests(site) -> None:
    client, engine, renderer = site
    post = _create(engine, renderer, 1)
    path = f"/read/{post.id}/{post.slug}"
    etag = client.get(path).headers["etag"]
    for condition in (etag, "*", f'"other", {etag}'):
        answer = client.get(path, headers={"If-None-Match": condition})
        assert (answer.status_code, answer.content) == (304, b"")
        assert answer.headers["etag"] == etag
    assert client.get(path, headers={"If-None-Match": '"other"'}).status_code == 200
    assert client.get(f"/read/{post.id}/wrong-slug").status_code == 301
    assert client.get(f"/read/{post.id + 100}/x").status_code == 404


class _Watched:
    """The app behind the front, noting every request that got past it."""

    def __init__(self, app: object) -> None:
        self.app, self.paths = app, []

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)  # type: ignore[operator]


def _front(site) -> tuple[TestClient, TestClient, _Watched]:  # type: ignore[no-untyped-def]
    """A client of the front alone (around FastAPI) and one of FastAPI alone (the route)."""
    client, engine, renderer = site
    fastapi = client.app.fastapi
    behind = _Watched(fastapi)
    front = StoredEssayPages(behind, fastapi.state.stored_pages)  # type: ignore[arg-type]
    return (
        TestClient(front, base_url=SITE_URL, follow_redirects=False),  # type: ignore[arg-type]
        TestClient(fastapi, base_url=SITE_URL, follow_redirects=False),
        behind,
    )


def test_the_front_answers_stored_pages_as_the_route_renders_them(site) -> None:
    """The stored bytes, identity or gzip, with the headers of the live page (the route) but
    the stored page's own ETag; HEAD and conditional requests too; nothing reaches FastAPI."""
    client, engine, renderer = site
    post = _create(engine, renderer, 1)
    front, route, behind = _front(site)
    path = f"/read/{post.id}/{post.slug}"
    mine, live = front.get(path), route.get(path)  # the route renders it live
    assert (mine.status_code, mine.content) == (200, live.content)
    assert mine.headers["etag"].startswith('W/"p') and live.headers["etag"] != mine.headers["etag"]
    assert _comparable(mine.headers, "etag") == _comparable(live.headers, "etag")

    zipped = front.get(path, headers={"accept-encoding": "gzip"})
    live_zipped = route.get(path, headers={"accept-encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.content == live.content  # decoded by the client
    skip = ("etag", "content-length")
    assert _comparable(zipped.headers, *skip) == _comparable(live_zipped.headers, *skip)

    head = front.head(path)
    assert (head.status_code, head.content) == (200, b"")
    assert _comparable(head.headers) == _comparable(mine.headers)

    etag = mine.headers["etag"]
    for condition in (etag, "*", f'"other", {etag}', etag.removeprefix("W/")):
        answer = front.get(path, headers={"if-none-match": condition})
        assert (answer.status_code, answer.content) == (304, b""), condition
        assert answer.headers["etag"] == etag
        assert answer.headers["cache-control"] == live.headers["cache-control"]
    assert front.get(path, headers={"if-none-match": '"other"'}).status_code == 200
    assert behind.paths == []  # all answered before FastAPI


def _comparable(headers: object, *also: str) -> list[tuple[str, str]]:
    skip = ("date", "x-request-id", *also)
    return sorted((k, v) for k, v in headers.multi_items() if k not in skip)  # type: ignore[attr-defined]


def test_the_front_leaves_everything_else_to_the_route(site) -> None:
    client, engine, renderer = site
    first, second = _create(engine, renderer, 1), _create(engine, renderer, 2)
    third = _create(engine, renderer, 3)
    with write_session(engine) as session:
        posts.delete_post(session, third.id, render=renderer)  # type: ignore[arg-type]
    unstored = add_post(engine, title="Written Without a Renderer", cycle=950)  # drops pages
    front, route, behind = _front(site)
    asks = {
        f"/read/{second.id}/wrong-slug": 301,
        f"/read/{third.id}/{third.slug}": 410,
        f"/read/{third.id + 100}/x": 404,
        "/read/99999999999/x": 404,
        f"/read/{unstored.id}/{unstored.slug}": 200,  # no stored copy: rendered live
    }
    for path, status in asks.items():
        mine, theirs = front.get(path), route.get(path)
        assert mine.status_code == theirs.status_code == status, path
        assert mine.content == theirs.content
    assert behind.paths == list(asks)
    assert front.post(f"/read/{first.id}/{first.slug}").status_code == 405
    assert front.get(f"/read/{first.id}/{first.slug}").status_code == 200


def test_neighbours_pages_follow_every_write(site) -> None:
    client, engine, renderer = site
    first, second = _create(engine, renderer, 1), _create(engine, renderer, 2)
    assert "Essay 2 on Breadth" in _page(client, first)  # "Next →"

    # An edit of the newer essay's title shows on the older one's stored page.
    with write_session(engine) as session:
        edited = sample_input(title="A Renamed Second Essay", cycle=902)
        edited = edited.model_copy(update={"published_at": second.published_at})
        posts.update_post(session, second.id, edited, "Workshop", render=renderer)  # type: ignore[arg-type]
    assert "A Renamed Second Essay" in _page(client, first)
    assert "Essay 2 on Breadth" not in _page(client, first)

    # A newer essay: the (renamed) second one now links to it.
    third = _create(engine, renderer, 3)
    with Session(engine) as session:
        renamed = posts.get_post(session, second.id)  # type: ignore[arg-type]
        assert "Essay 3 on Breadth" in _page(client, renamed)

    # A delete: the neighbours now link past it, and its page is 410.
    with write_session(engine) as session:
        posts.delete_post(session, renamed.id, render=renderer)  # type: ignore[arg-type]
    page = _page(client, first)
    assert "A Renamed Second Essay" not in page and "Essay 3 on Breadth" in page
    assert client.get(f"/read/{renamed.id}/{renamed.slug}").status_code == 410
    assert renamed.id not in _stored_ids(engine)
    assert third.id in _stored_ids(engine)


def test_a_write_without_a_renderer_never_leaves_a_stale_page(site) -> None:
    client, engine, renderer = site
    first = _create(engine, renderer, 1)
    assert _stored_ids(engine) == {first.id}
    newer = add_post(engine, title="Written Without a Renderer", cycle=950)  # no renderer
    assert _stored_ids(engine) == set()  # the older essay's page changed: dropped, not stale
    assert "Written Without a Renderer" in _page(client, first)  # rendered live
    assert _page(client, newer)


def test_bulk_creation_stores_every_page_with_its_neighbours(site) -> None:
    client, engine, renderer = site
    batch = [
        PostIn.model_validate(
            {
                **sample_input().model_dump(mode="json"),
                "title": f"Bulk {n}",
                "cycle": 800 + n,
                "published_at": f"2026-03-{n:02d}T10:00:00Z",
            }
        )
        for n in range(1, 6)
    ]
    with write_session(engine) as session:
        posts.create_many(session, batch, "Workshop", renderer)  # type: ignore[arg-type]
    stored = _stored_ids(engine)
    assert len(stored) == 5
    with Session(engine) as session:
        views = posts.list_published(session, 10)
    by_title = {p.title: p for p in views}
    assert "Bulk 4" in _page(client, by_title["Bulk 3"]) and "Bulk 2" in _page(
        client, by_title["Bulk 3"]
    )


def test_pages_refresh_stores_what_is_missing(site, database_url, monkeypatch) -> None:
    from click.testing import CliRunner

    from app.cli import main

    client, engine, renderer = site
    made = [add_post(engine, title=f"Old Build {n}", cycle=700 + n) for n in range(3)]
    assert _stored_ids(engine) == set()  # written without a renderer: pages render live
    live = {p.id: _page(client, p) for p in made}
    monkeypatch.setenv("WORKSHOP_DATABASE_URL", database_url)
    monkeypatch.setenv("WORKSHOP_SITE_URL", SITE_URL)
    result = CliRunner().invoke(main, ["pages", "refresh"])
    assert result.exit_code == 0, result.output
    assert "stored 3 essay pages" in result.output
    assert _stored_ids(engine) == {p.id for p in made}
    for post in made:
        assert _page(client, post) == live[post.id]  # the same page, now from storage
    again = CliRunner().invoke(main, ["pages", "refresh"])
    assert "stored 0 essay pages" in again.output


def test_concurrent_writers_leave_every_page_right(site) -> None:
    """Writers store their neighbours' pages too; on PostgreSQL they take turns (a lock taken
    first), so concurrent creates never collide on a page or store one from a stale view."""
    from concurrent.futures import ThreadPoolExecutor

    client, engine, renderer = site
    _create(engine, renderer, 1)
    with ThreadPoolExecutor(6) as pool:
        made = list(pool.map(lambda n: _create(engine, renderer, n), range(2, 14)))
    assert len(made) == 12
    with Session(engine) as session:
        every = posts.list_published(session, 50)
    assert _stored_ids(engine) == {p.id for p in every}
    stored = {p.id: _page(client, p) for p in every}
    with write_session(engine) as session:
        essaypage.drop_pages(session, {p.id for p in every})  # type: ignore[misc]
        session.commit()
    for post in every:
        assert _page(client, post) == stored[post.id], post.title  # the live render agrees


def test_every_worker_serves_stored_pages_fresh_after_each_write(
    settings, engine, tmp_path
) -> None:
    """A worker keeps the stored pages it read while nothing is written (SQLite, cache on):
    any write, by anybody, shows on every worker's next answer."""
    renderer = Renderer.for_settings(settings)
    post = _create(engine, renderer, 1)
    path = f"/read/{post.id}/{post.slug}"
    site = {"WORKSHOP_SITE_URL": SITE_URL, "WORKSHOP_SITE_NAME": settings.site_name}
    servers = [start_server(settings, tmp_path, **site) for _ in range(2)]
    try:
        before = [httpx.get(server.url + path) for server in servers for _ in range(3)]
        assert {a.status_code for a in before} == {200}
        etag = before[0].headers["etag"]
        assert etag.startswith('W/"p') and {a.headers["etag"] for a in before} == {etag}
        assert len({a.content for a in before}) == 1 and b"Essay 1 on Breadth" in before[0].content
        with write_session(engine) as session:
            current = posts.load_views(session, [posts.get_post(session, post.id)])[0].to_input()
            edited = current.model_copy(update={"body": "Minds now agree: *breadth* is gone."})
            posts.update_post(session, post.id, edited, "Workshop", render=renderer)  # type: ignore[arg-type]
        for server in servers:
            page = httpx.get(server.url + path, headers={"If-None-Match": etag})
            assert page.status_code == 200 and "is gone" in page.text
            assert page.headers["etag"].startswith('W/"p') and page.headers["etag"] != etag
        with write_session(engine) as session:
            posts.delete_post(session, post.id, render=renderer)  # type: ignore[arg-type]
        for server in servers:
            assert httpx.get(server.url + path).status_code == 410
    finally:
        for server in servers:
            stop_server(server)
