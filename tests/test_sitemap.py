"""/sitemap.xml (sitemaps.org), its index past the URL limit, and /robots.txt."""

from datetime import datetime, timedelta
from xml.etree import ElementTree as ET

import pytest
from conftest import SITE_URL, add_post, as_if_written_a_minute_ago, sample_input
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app import db, posts, sitemap

NS = "{http://www.sitemaps.org/schemas/sitemap/0.9}"


@pytest.fixture
def site(engine: Engine) -> list[posts.Post]:
    made = [
        add_post(engine, cycle=1, published_at="2026-01-15T12:00:00Z", tags=["QQQ"], stories=[]),
        # 02:00 UTC on March 1 is still February in Los Angeles: the archive month is local.
        add_post(
            engine,
            cycle=2,
            title="Second",
            published_at="2026-03-01T02:00:00Z",
            tags=["TSLA", "QQQ"],
            stories=[{"title": "Mega-Cap Decline", "status": "developing"}],
        ),
        add_post(
            engine,
            cycle=3,
            title="Third",
            published_at="2026-04-10T12:00:00Z",
            tags=["gone"],
            stories=[{"title": "Gone Story", "status": "developing"}],
        ),
        add_post(engine, cycle=4, title="Fourth", published_at="2026-04-11T12:00:00Z", tags=[]),
    ]
    with db.write_session(engine) as session:
        posts.delete_post(session, made[2].id)  # type: ignore[arg-type]
    as_if_written_a_minute_ago(engine)
    return made


def urlset(content: bytes) -> dict[str, str]:
    root = ET.fromstring(content)
    assert root.tag == f"{NS}urlset"
    found = {}
    for url in root.findall(f"{NS}url"):
        loc, lastmod = url.findtext(f"{NS}loc") or "", url.findtext(f"{NS}lastmod") or ""
        assert loc.startswith(SITE_URL + "/")
        if lastmod or "/read/" in loc:  # lastmod is optional, but every essay has one
            datetime.fromisoformat(lastmod)  # W3C datetime
        found[loc] = lastmod
    return found


def test_sitemap_lists_every_published_page(client: TestClient, site: list[posts.Post]) -> None:
    response = client.get("/sitemap.xml")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/xml; charset=utf-8"
    assert response.headers["etag"] and response.headers["last-modified"]
    urls = urlset(response.content)
    live = [p for p in site if p.cycle != 3]
    expected = {f"{SITE_URL}/read/{p.id}/{p.slug}" for p in live} | {
        f"{SITE_URL}/",
        f"{SITE_URL}/archive",
        f"{SITE_URL}/archive/2026/01",
        f"{SITE_URL}/archive/2026/02",
        f"{SITE_URL}/archive/2026/04",
        f"{SITE_URL}/tags/qqq",
        f"{SITE_URL}/tags/tsla",
        f"{SITE_URL}/stories/mega-cap-decline",
        f"{SITE_URL}/stories/narrow-leadership",
    }
    assert set(urls) == expected  # the deleted essay, its only tag and story are left out
    post = live[0]
    assert datetime.fromisoformat(
        urls[f"{SITE_URL}/read/{post.id}/{post.slug}"]
    ) == post.updated_at.replace(microsecond=0)


def test_sitemap_pages_through_batches(
    client: TestClient, site: list[posts.Post], monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = urlset(client.get("/sitemap.xml").content)
    monkeypatch.setattr(sitemap, "BATCH", 1)  # every keyset step taken, one row at a time
    add_post(
        client.app.state.engine,
        cycle=5,
        title="Fifth",
        published_at="2026-04-12T12:00:00Z",
        tags=[],
    )  # type: ignore[attr-defined]
    again = urlset(client.get("/sitemap.xml").content)
    assert set(whole) < set(again) and len(again) == len(whole) + 1


def test_sitemap_index_past_the_limit(
    uncached_client: TestClient, site: list[posts.Post], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = uncached_client  # the limit changes below without a write: bypass the page cache
    whole = urlset(client.get("/sitemap.xml").content)
    monkeypatch.setattr(sitemap, "MAX_URLS", 2)
    response = client.get("/sitemap.xml")
    root = ET.fromstring(response.content)
    assert root.tag == f"{NS}sitemapindex"
    children = [s.findtext(f"{NS}loc") or "" for s in root.findall(f"{NS}sitemap")]
    assert all(s.findtext(f"{NS}lastmod") for s in root.findall(f"{NS}sitemap"))
    assert all(c.startswith(SITE_URL + "/sitemaps/") for c in children)
    union: dict[str, str] = {}
    for child in children:
        part = urlset(client.get(child.removeprefix(SITE_URL)).content)
        assert len(part) <= 2 or child.endswith("pages-0.xml")
        assert not set(part) & set(union)
        union.update(part)
    assert union == whole


@pytest.mark.parametrize(
    "name", ["posts-x.xml", "nope-0.xml", "pages-1.xml", "posts-999999999.xml", "posts-1"]
)
def test_unknown_child_sitemap_is_404(client: TestClient, name: str) -> None:
    assert client.get(f"/sitemaps/{name}").status_code == 404


def test_empty_site_has_a_valid_sitemap(client: TestClient) -> None:
    assert set(urlset(client.get("/sitemap.xml").content)) == {SITE_URL + "/"}


def test_sitemap_304(client: TestClient, site: list[posts.Post]) -> None:
    first = client.get("/sitemaps/posts-0.xml")
    again = client.get("/sitemaps/posts-0.xml", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_robots_names_the_sitemap(client: TestClient) -> None:
    response = client.get("/robots.txt")
    assert response.status_code == 200
    lines = response.text.splitlines()
    assert "User-agent: *" in lines
    assert f"Sitemap: {SITE_URL}/sitemap.xml" in lines


def test_a_deleted_essay_moves_the_lastmod_of_the_pages_it_left(
    client: TestClient, engine: Engine, site: list[posts.Post], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It left `/`, its tag, its month and the feeds: their dates said nothing had changed, so
    a crawler or feed reader had no reason to look again."""
    post = add_post(
        engine, cycle=9, title="Brief", published_at="2026-01-20T12:00:00Z", tags=["QQQ"]
    )
    later = post.updated_at + timedelta(hours=1)  # well after every other change
    monkeypatch.setattr(posts, "utcnow", lambda: later)
    with db.write_session(engine) as session:
        posts.delete_post(session, post.id)  # type: ignore[arg-type]
    when = later.replace(microsecond=0)
    urls = urlset(client.get("/sitemap.xml").content)
    for page in ("/", "/archive", "/archive/2026/01", "/tags/qqq"):
        assert datetime.fromisoformat(urls[SITE_URL + page]) == when, page
    for feed in ("/atom.xml", "/tags/qqq/atom.xml"):
        updated = ET.fromstring(client.get(feed).content).findtext(
            "{http://www.w3.org/2005/Atom}updated"
        )
        assert datetime.fromisoformat(updated or "").replace(microsecond=0) == when, feed


def test_an_edit_that_takes_an_essay_off_a_tag_moves_that_tags_lastmod(
    client: TestClient,
    uncached_client: TestClient,
    engine: Engine,
    site: list[posts.Post],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tag's and the story's pages lost an essay, though every essay they still list is
    unchanged: their sitemap lastmod and their feeds' `updated` said nothing had changed."""
    post = add_post(
        engine,
        cycle=9,
        title="Brief",
        published_at="2026-01-20T12:00:00Z",
        tags=["QQQ"],
        stories=[{"title": "Mega-Cap Decline", "status": "fading"}],
    )
    later = post.updated_at + timedelta(hours=1)  # well after every other change
    monkeypatch.setattr(posts, "utcnow", lambda: later)
    edited = sample_input(
        cycle=9, title="Brief", published_at="2026-01-20T12:00:00Z", tags=[], stories=[]
    )
    with db.write_session(engine) as session:
        posts.update_post(session, post.id, edited, "Workshop")  # type: ignore[arg-type]
    when = later.replace(microsecond=0)
    urls = urlset(client.get("/sitemap.xml").content)
    for page in ("/tags/qqq", "/stories/mega-cap-decline"):
        assert datetime.fromisoformat(urls[SITE_URL + page]) == when, page
    for feed in ("/tags/qqq/atom.xml", "/stories/mega-cap-decline/atom.xml"):
        updated = ET.fromstring(client.get(feed).content).findtext(
            "{http://www.w3.org/2005/Atom}updated"
        )
        assert datetime.fromisoformat(updated or "").replace(microsecond=0) == when, feed
    assert datetime.fromisoformat(urls[SITE_URL + "/tags/tsla"]) < when  # it lost nothing
    monkeypatch.setattr(sitemap, "MAX_URLS", 2)  # an index: its tag and story chunks move too
    index = ET.fromstring(uncached_client.get("/sitemap.xml").content)
    for section in ("tags", "stories"):
        chunks = [
            datetime.fromisoformat(child.findtext(f"{NS}lastmod") or "")
            for child in index.findall(f"{NS}sitemap")
            if f"/sitemaps/{section}-" in (child.findtext(f"{NS}loc") or "")
        ]
        assert max(chunks) == when, section


def test_an_edit_that_moves_an_essay_to_another_month_moves_the_month_it_left(
    client: TestClient, engine: Engine, site: list[posts.Post], monkeypatch: pytest.MonkeyPatch
) -> None:
    """January's archive page lost an essay, though every essay it still lists is unchanged."""
    post = add_post(engine, cycle=9, title="Brief", published_at="2026-01-20T12:00:00Z")
    later = post.updated_at + timedelta(hours=1)  # well after every other change
    monkeypatch.setattr(posts, "utcnow", lambda: later)
    moved = sample_input(cycle=9, title="Brief", published_at="2026-04-12T12:00:00Z")
    with db.write_session(engine) as session:
        posts.update_post(session, post.id, moved, "Workshop")  # type: ignore[arg-type]
    when = later.replace(microsecond=0)
    urls = urlset(client.get("/sitemap.xml").content)
    for month in ("/archive/2026/01", "/archive/2026/04"):  # the month it left, and its new one
        assert datetime.fromisoformat(urls[SITE_URL + month]) == when, month
    assert datetime.fromisoformat(urls[SITE_URL + "/archive/2026/02"]) < when  # untouched
