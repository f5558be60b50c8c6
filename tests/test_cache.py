"""The response cache: hits, freshness after every write (on every worker), bypasses and bounds."""

import asyncio
import json
import logging
from pathlib import Path

import httpx
import pytest
from conftest import SITE_URL, add_post, sample_input, start_server, stop_server
from conftest import test_settings as make_settings
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlmodel import Session

from app import beacon, db, posts
from app.cache import LRU, Entry, ResponseCache
from app.config import Settings
from app.main import create_app
from app.observability import LogFormatter


def _edit_title(engine: Engine, post_id: int, title: str) -> None:
    with db.write_session(engine) as session:
        posts.update_post(session, post_id, sample_input(title=title), "Workshop")


def test_second_request_is_a_hit_with_the_same_bytes(engine, client):
    post = add_post(engine)
    path = f"/read/{post.id}/{post.slug}"
    first = client.get(path)
    second = client.get(path)
    assert (first.status_code, first.headers["x-cache"]) == (200, "miss")
    assert (second.status_code, second.headers["x-cache"]) == (200, "hit")
    assert second.content == first.content
    assert second.headers["content-type"] == first.headers["content-type"]
    assert client.head(path).headers["x-cache"] == "hit"


def test_an_edit_or_delete_is_visible_at_once(engine, client):
    post = add_post(engine)
    path = f"/read/{post.id}/{post.slug}"
    client.get(path)
    client.get("/")
    assert client.get(path).headers["x-cache"] == "hit"

    _edit_title(engine, post.id, "Breadth Is Thinning Under a Calm Index, Revised")
    page = client.get(path)  # the slug follows the title: the old path now redirects
    assert (page.status_code, page.headers["x-cache"]) == (301, "miss")
    new_path = page.headers["location"]
    assert "Revised" in client.get(new_path).text
    assert "Revised" in client.get("/").text

    with db.write_session(engine) as session:
        posts.delete_post(session, post.id)
    assert client.get(new_path).status_code == 410
    assert "Revised" not in client.get("/").text


def test_every_worker_sees_an_edit_at_once(settings: Settings, engine, tmp_path: Path):
    post = add_post(engine)
    path = f"/read/{post.id}/{post.slug}"
    servers = [start_server(settings, tmp_path), start_server(settings, tmp_path)]
    try:
        for server in servers:
            httpx.get(server.url + path)
            assert httpx.get(server.url + path).headers["x-cache"] == "hit"
        # Keep the slug, change the title shown: the body of the cached page must change.
        with db.write_session(engine) as session:
            current = posts.load_views(session, [posts.get_post(session, post.id)])[0].to_input()
            edited = current.model_copy(update={"body": "Minds now agree: *breadth* is gone."})
            posts.update_post(session, post.id, edited, "Workshop")
        for server in servers:
            page = httpx.get(server.url + path)
            assert (page.status_code, page.headers["x-cache"]) == (200, "miss")
            assert "is gone" in page.text
        with db.write_session(engine) as session:
            posts.delete_post(session, post.id)
        for server in servers:
            assert httpx.get(server.url + path).status_code == 410
    finally:
        for server in servers:
            stop_server(server)


@pytest.mark.parametrize(
    "header", [{"Authorization": "Bearer anything"}, {"Cookie": "session=abc"}]
)
def test_personal_requests_bypass_the_cache(engine, client, header):
    add_post(engine)
    client.get("/")
    assert client.get("/").headers["x-cache"] == "hit"
    response = client.get("/", headers=header)
    assert response.status_code == 200
    assert "x-cache" not in response.headers


@pytest.mark.parametrize("path", ["/healthz", "/static/style.css", "/openapi.json"])
def test_operator_static_and_docs_paths_are_never_cached(client, path):
    client.get(path)
    assert "x-cache" not in client.get(path).headers


def test_the_setting_switches_it_off(database_url, engine):
    add_post(engine)
    app = create_app(make_settings(database_url, response_cache=False))
    with TestClient(app, base_url=SITE_URL) as off:
        off.get("/")
        response = off.get("/")
    app.state.engine.dispose()
    assert response.status_code == 200
    assert "x-cache" not in response.headers


def test_an_unreadable_version_is_warned_under_the_request_id(tmp_path: Path, caplog):
    """No database where the settings point (a mistyped WORKSHOP_DATABASE_URL, a file moved
    away): the cache steps aside, and its warning names the request that met it, as the
    request's own error and access lines do, so the operator finds them together."""
    app = create_app(make_settings(f"sqlite:///{tmp_path / 'nowhere.db'}"))
    with (
        caplog.at_level(logging.WARNING, logger="app.cache"),
        TestClient(app, base_url=SITE_URL) as client,
    ):
        answer = client.get("/", headers={"X-Request-ID": "r-cache"})
    app.state.engine.dispose()
    assert answer.status_code == 503 and answer.headers["x-request-id"] == "r-cache"
    [warning] = [r for r in caplog.records if r.name == "app.cache"]
    line = json.loads(LogFormatter(as_json=True).format(warning))  # as `workshop serve` logs it
    assert line["level"] == "warning"
    assert line["message"].startswith("response cache bypassed: content version unreadable")
    assert line["request_id"] == "r-cache" and "r-cache" in line["message"]
    assert (line["method"], line["path"]) == ("GET", "/")
    assert "no database at" in line["exception"]


def test_error_pages_are_cached_per_kind_of_client(client):
    browser = {"Accept": "text/html"}
    assert client.get("/read/999/nothing", headers=browser).headers["x-cache"] == "miss"
    page = client.get("/read/999/nothing", headers=browser)
    problem = client.get("/read/999/nothing")
    assert (page.status_code, page.headers["x-cache"]) == (404, "hit")
    assert page.headers["content-type"].startswith("text/html")
    assert (problem.status_code, problem.headers["x-cache"]) == (404, "miss")
    assert problem.headers["content-type"] == "application/problem+json"


# --- the middleware on a small ASGI app: conditional answers and what is never stored ---------


def _asgi_app(calls: list[str]):  # type: ignore[no-untyped-def]
    """Answers by path: an ETag'd page, a cookie-setting page, a 500, a big page."""

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        calls.append(scope["path"])
        status, headers, body = 200, [(b"content-type", b"text/plain")], b"hello"
        if scope["path"] == "/tagged":
            headers.append((b"etag", b'"v1"'))
            headers.append((b"last-modified", b"Fri, 03 Apr 2026 17:51:27 GMT"))
        elif scope["path"] == "/cookie":
            headers.append((b"set-cookie", b"a=b"))
        elif scope["path"] == "/private":
            headers.append((b"cache-control", b"private, max-age=60"))
        elif scope["path"] == "/broken":
            status = 500
        elif scope["path"] == "/big":
            body = b"x" * 5000
        elif scope["path"] == "/slow":
            await asyncio.sleep(0.2)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


@pytest.fixture
def raw(engine) -> tuple[httpx.Client, list[str]]:
    calls: list[str] = []
    cache = ResponseCache(_asgi_app(calls), engine, max_entry_bytes=4096)
    with TestClient(cache, base_url=SITE_URL) as client:  # type: ignore[arg-type]
        yield client, calls


def test_a_hit_answers_if_none_match_with_304(raw):
    client, calls = raw
    assert client.get("/tagged").status_code == 200
    for condition in ('"v1"', 'W/"v0", W/"v1"', "*"):
        answer = client.get("/tagged", headers={"If-None-Match": condition})
        assert (answer.status_code, answer.headers["x-cache"]) == (304, "hit")
        assert answer.headers["etag"] == '"v1"'
        assert answer.content == b""
    assert client.get("/tagged", headers={"If-None-Match": '"v0"'}).status_code == 200
    since = {"If-Modified-Since": "Sat, 04 Apr 2026 00:00:00 GMT"}
    assert client.get("/tagged", headers=since).status_code == 304
    assert calls == ["/tagged"]


def test_a_conditional_or_head_miss_stores_the_full_answer(raw):
    """Feed readers poll with If-None-Match: their first request on a worker fills its cache."""
    client, calls = raw
    first = client.get("/tagged", headers={"If-None-Match": '"v1"'})
    assert (first.status_code, first.headers["x-cache"], first.content) == (304, "miss", b"")
    assert first.headers["etag"] == '"v1"'
    assert client.get("/tagged", headers={"If-None-Match": '"v1"'}).headers["x-cache"] == "hit"
    full = client.get("/tagged")
    assert (full.status_code, full.headers["x-cache"], full.content) == (200, "hit", b"hello")

    head = client.head("/")
    assert (head.status_code, head.headers["x-cache"], head.content) == (200, "miss", b"")
    assert client.get("/").headers["x-cache"] == "hit"

    stale = client.get("/big", headers={"If-None-Match": '"v0"'})  # too big to store
    assert (stale.status_code, len(stale.content), stale.headers["x-cache"]) == (200, 5000, "miss")
    assert calls == ["/tagged", "/", "/big", "/big"]  # the unstorable one asked twice


@pytest.mark.parametrize("path", ["/cookie", "/private", "/broken", "/big"])
def test_uncacheable_answers_are_not_stored(raw, path):
    client, calls = raw
    client.get(path)
    client.cookies.clear()  # else the client's next request carries a Cookie and bypasses
    assert client.get(path).headers["x-cache"] == "miss"
    assert calls == [path, path]


def test_a_write_elsewhere_bumps_the_key(raw, engine):
    client, calls = raw
    client.get("/tagged")
    client.get("/tagged")
    add_post(engine)
    assert client.get("/tagged").headers["x-cache"] == "miss"
    assert calls == ["/tagged", "/tagged"]


def test_lru_keeps_within_both_bounds():
    def entry(n: int) -> Entry:
        return Entry(200, [], b"x" * n, None, None, [])

    lru = LRU(max_entries=3, max_bytes=2000)
    for i in range(5):
        lru.put((b"", f"/{i}", b"", False, False, 1), entry(10))
    assert len(lru) == 3
    assert lru.get((b"", "/0", b"", False, False, 1)) is None
    lru.get((b"", "/2", b"", False, False, 1))  # now most recently used
    lru.put((b"", "/big", b"", False, False, 1), entry(1500))
    assert lru.bytes <= 2000
    assert lru.get((b"", "/2", b"", False, False, 1)) is not None
    assert lru.get((b"", "/3", b"", False, False, 1)) is None


# --- the shared-memory beacon (SQLite files): the version without a query ---------------------


def test_every_write_publishes_its_version_to_the_beacon(engine):
    shared = beacon.for_engine(engine)
    if shared is None:
        pytest.skip(
            "the beacon is for SQLite files; PostgreSQL workers have watchers (test_watch.py)"
        )
    post = add_post(engine)
    with Session(engine) as session:
        assert shared.read() == posts.content_version(session)
    _edit_title(engine, post.id, "A Second Title")
    with Session(engine) as session:
        assert shared.read() == posts.content_version(session)


def test_the_beacon_never_goes_back(tmp_path):
    shared = beacon.Beacon(tmp_path / "x.db-version")
    shared.publish(7)
    shared.publish(5)  # a slower writer publishing an older commit
    assert shared.read() == 7
    assert shared.reconcile(lambda: 9) == 9 and shared.read() == 9


def test_a_change_the_beacon_missed_shows_after_the_recheck(engine, monkeypatch):
    """A writer killed between its commit and its publish: readers catch up from the database."""
    if beacon.for_engine(engine) is None:
        pytest.skip(
            "the beacon is for SQLite files; PostgreSQL workers have watchers (test_watch.py)"
        )
    monkeypatch.setattr(beacon, "RECHECK_SECONDS", 3600.0)
    calls: list[str] = []
    cache = ResponseCache(_asgi_app(calls), engine)
    with TestClient(cache, base_url=SITE_URL) as client:  # type: ignore[arg-type]
        client.get("/tagged")
        with engine.begin() as conn:  # a committed write that never reached the beacon
            conn.execute(
                text("UPDATE site_state SET value = value + 1 WHERE name = 'content_version'")
            )
        assert client.get("/tagged").headers["x-cache"] == "hit"  # the beacon, not a query
        cache.versions._recheck_at = 0.0  # the recheck is due
        assert client.get("/tagged").headers["x-cache"] == "miss"
        assert client.get("/tagged").headers["x-cache"] == "hit"
    assert calls == ["/tagged", "/tagged"]


def test_concurrent_misses_render_once(engine):
    """Clients arriving together at an uncached page wait for one render (no stampede)."""
    calls: list[str] = []
    cache = ResponseCache(_asgi_app(calls), engine)

    async def many() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=cache)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url=SITE_URL) as client:
            return await asyncio.gather(*(client.get("/slow") for _ in range(10)))

    answers = asyncio.run(many())
    assert [a.status_code for a in answers] == [200] * 10
    assert calls == ["/slow"]
    assert sorted(a.headers["x-cache"] for a in answers) == ["hit"] * 9 + ["miss"]
