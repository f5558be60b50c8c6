"""RSS 2.0, Atom 1.0 and JSON Feed 1.1: parsed with feedparser, checked element by element, and
polled conditionally (ETag / Last-Modified / 304 without rendering)."""

import html
import json
import re
import time
from collections.abc import Iterator
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from xml.etree import ElementTree as ET

import feedparser
import pytest
from conftest import SITE_URL, add_post, as_if_written_a_minute_ago, sample_input
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, text

from app import db, posts
from app.config import Settings
from app.main import create_app

ATOM = "{http://www.w3.org/2005/Atom}"
CONTENT = "{http://purl.org/rss/1.0/modules/content/}"
DC = "{http://purl.org/dc/elements/1.1/}"
FEED_FILES = ["feed.xml", "atom.xml", "feed.json"]
SCOPES = ["", "/tags/qqq", "/stories/narrow-leadership"]
ALL_FEEDS = [f"{scope}/{name}" for scope in SCOPES for name in FEED_FILES]
MEDIA = {
    "feed.xml": "application/rss+xml",
    "atom.xml": "application/atom+xml",
    "feed.json": "application/feed+json",
}


@pytest.fixture
def essays(engine: Engine) -> list[posts.Post]:
    made = [
        add_post(engine, cycle=900, published_at="2026-04-01T10:00:00Z"),
        add_post(
            engine,
            cycle=901,
            title="Flows Turned Before Prices Did",
            body="Read [the archive](/archive), see ![chart](../img/flow.png) and [a note][^1].\n\n"
            "[^1]: Footnote.",
            published_at="2026-04-02T10:00:00Z",
            tags=["QQQ", "S&P"],
        ),
        add_post(
            engine,
            cycle=902,
            title="No Debate Today",
            debate=None,
            tags=[],
            stories=[],
            published_at="2026-04-03T10:00:00Z",
        ),
    ]
    as_if_written_a_minute_ago(engine)
    return made


def rfc3339(value: str) -> datetime:
    return datetime.fromisoformat(value)


def parse(response: Any) -> list[dict[str, str]]:
    """Entries as {id, link, title (plain text), content (HTML)}: XML feeds through feedparser
    (which must not flag them), JSON Feed (feedparser 6.0 does not read it) against the 1.1
    rules for top-level and item fields."""
    if response.headers["content-type"].startswith("application/feed+json"):
        doc = response.json()
        assert doc["version"] == "https://jsonfeed.org/version/1.1" and doc["title"]
        assert doc["feed_url"].startswith(SITE_URL) and doc["home_page_url"].startswith(SITE_URL)
        for item in doc["items"]:
            assert isinstance(item["id"], str) and item["content_html"]
        return [
            {"id": i["id"], "link": i["url"], "title": i["title"], "content": i["content_html"]}
            for i in doc["items"]
        ]
    parsed = feedparser.parse(response.content)
    assert not parsed.bozo, parsed.get("bozo_exception")
    out = []
    for e in parsed.entries:
        plain = e.title_detail.type == "text/plain"
        out.append(
            {
                "id": e.id,
                "link": e.link,
                "title": e.title if plain else html.unescape(e.title),
                "content": e.content[0].value,
            }
        )
    return out


@pytest.mark.parametrize("path", ALL_FEEDS)
def test_every_feed_parses_cleanly(client: TestClient, essays: list[posts.Post], path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == MEDIA[path.rsplit("/", 1)[1]]
    entries = parse(response)
    expected = 3 if path.count("/") == 1 else 2  # the tag and the story are on two essays
    assert len(entries) == expected
    # newest first, absolute permalinks everywhere
    links = [e["link"] for e in entries]
    assert links == sorted(links, key=lambda link: -int(link.split("/")[4]))
    for entry in entries:
        assert entry["link"].startswith(SITE_URL + "/read/")
        if path.endswith("feed.xml"):  # RSS: the guid is the permalink itself
            assert entry["id"] == entry["link"]
        else:  # Atom and JSON Feed ids never change, even when a title (so the slug) does
            assert entry["id"] == SITE_URL + "/read/" + entry["link"].split("/")[4]


def test_rss_element_by_element(client: TestClient, essays: list[posts.Post]) -> None:
    root = ET.fromstring(client.get("/feed.xml").content)
    assert root.tag == "rss" and root.get("version") == "2.0"
    channel = root.find("channel")
    assert channel is not None
    assert channel.findtext("title") == "Workshop Test"
    assert channel.findtext("link") == SITE_URL + "/"
    assert channel.findtext("description")
    self_link = channel.find(f"{ATOM}link[@rel='self']")
    assert self_link is not None and self_link.get("href") == SITE_URL + "/feed.xml"
    assert self_link.get("type") == "application/rss+xml"
    newest = max(p.updated_at for p in essays)
    assert parsedate_to_datetime(channel.findtext("lastBuildDate") or "") == newest.replace(
        microsecond=0
    )

    items = channel.findall("item")
    by_id = {p.id: p for p in essays}
    assert len(items) == 3
    for item in items:
        guid = item.find("guid")
        assert guid is not None and guid.get("isPermaLink") == "true"
        post = by_id[int((guid.text or "").split("/read/", 1)[1].split("/")[0])]
        # The guid is the permalink itself, as the issue asks (and equal to the item's link).
        assert guid.text == f"{SITE_URL}/read/{post.id}/{post.slug}"
        assert item.findtext("title") == post.title
        assert item.findtext("link") == f"{SITE_URL}/read/{post.id}/{post.slug}"
        assert parsedate_to_datetime(item.findtext("pubDate") or "") == post.published_at
        assert re.fullmatch(
            r"\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} \+0000", item.findtext("pubDate") or ""
        )
        assert item.findtext(f"{DC}creator") == "Workshop"
        assert item.findtext("description")
        assert "<p>" in (item.findtext(f"{CONTENT}encoded") or "")
    flows = next(i for i in items if i.findtext("title") == "Flows Turned Before Prices Did")
    assert [c.text for c in flows.findall("category")] == ["QQQ", "S&P"]


def test_atom_follows_rfc_4287(client: TestClient, essays: list[posts.Post]) -> None:
    feed = ET.fromstring(client.get("/atom.xml").content)
    assert feed.tag == f"{ATOM}feed"
    assert feed.findtext(f"{ATOM}id") == SITE_URL + "/"
    assert feed.findtext(f"{ATOM}title") == "Workshop Test"
    assert rfc3339(feed.findtext(f"{ATOM}updated") or "") == max(p.updated_at for p in essays)
    assert feed.findtext(f"{ATOM}author/{ATOM}name") == "Workshop"
    links = {link.get("rel"): link.get("href") for link in feed.findall(f"{ATOM}link")}
    assert links["self"] == SITE_URL + "/atom.xml"
    assert links["alternate"] == SITE_URL + "/"
    assert "hub" not in links  # no hub configured

    entries = feed.findall(f"{ATOM}entry")
    assert len(entries) == 3
    by_id = {f"{SITE_URL}/read/{p.id}": p for p in essays}
    for entry in entries:
        post = by_id[entry.findtext(f"{ATOM}id") or ""]
        title = entry.find(f"{ATOM}title")
        assert title is not None and title.get("type") == "html"
        assert html.unescape(title.text or "") == post.title
        assert rfc3339(entry.findtext(f"{ATOM}updated") or "") == post.updated_at
        assert rfc3339(entry.findtext(f"{ATOM}published") or "") == post.published_at
        assert entry.findtext(f"{ATOM}author/{ATOM}name") == post.author
        content = entry.find(f"{ATOM}content")
        assert content is not None and content.get("type") == "html"
        alternate = entry.find(f"{ATOM}link[@rel='alternate']")
        assert alternate is not None
        assert alternate.get("href") == f"{SITE_URL}/read/{post.id}/{post.slug}"
        assert alternate.get("type") == "text/html"


def test_json_feed_1_1(client: TestClient, essays: list[posts.Post]) -> None:
    response = client.get("/tags/qqq/feed.json")
    assert response.headers["content-type"] == "application/feed+json; charset=utf-8"
    doc = response.json()
    assert doc["version"] == "https://jsonfeed.org/version/1.1"
    assert doc["feed_url"] == SITE_URL + "/tags/qqq/feed.json"
    assert doc["home_page_url"] == SITE_URL + "/tags/qqq"
    assert "QQQ" in doc["title"]
    assert "hubs" not in doc
    item = doc["items"][0]
    post = essays[1]
    assert item["id"] == f"{SITE_URL}/read/{post.id}"
    assert item["url"] == f"{SITE_URL}/read/{post.id}/{post.slug}"
    assert item["title"] == post.title
    assert item["tags"] == ["QQQ", "S&P"]
    assert rfc3339(item["date_published"]) == post.published_at
    assert rfc3339(item["date_modified"]) == post.updated_at
    assert item["authors"] == [{"name": "Workshop"}]


def _content_of(client: TestClient, path: str) -> str:
    entries = parse(client.get(path))
    return next(e["content"] for e in entries if e["title"] == "Flows Turned Before Prices Did")


@pytest.mark.parametrize("name", FEED_FILES)
def test_content_has_absolute_urls_and_the_debate(
    client: TestClient, essays: list[posts.Post], name: str
) -> None:
    post = essays[1]
    content = _content_of(client, f"/{name}")
    assert f'href="{SITE_URL}/archive"' in content
    assert f'src="{SITE_URL}/read/img/flow.png"' in content  # resolved against the permalink
    assert f'href="{SITE_URL}/read/{post.id}/{post.slug}#fn1"' in content
    assert not re.search(r'(?:href|src)="(?!https?://)', content)
    assert "Debate: split | Conviction: 42% | Macro: 35% | Flow: 60% | Contrarian: 30%" in content
    assert "Narrow Leadership (developing)" in content


@pytest.mark.parametrize("name", FEED_FILES)
def test_no_debate_no_block(client: TestClient, essays: list[posts.Post], name: str) -> None:
    quiet = next(e for e in parse(client.get(f"/{name}")) if e["title"] == "No Debate Today")
    assert "Debate:" not in quiet["content"]


HOSTILE_TITLES = [
    "Ampersands & <angles> && &amp; &lt;",
    "<script>alert('x')</script> ends here",
    "CDATA enders ]]> and ]]&gt; too",
    "Emoji 🚀📉 and a ZWJ family 👩‍👩‍👧",
    "עברית and العربية mixed with \u202eRTL override\u202c",
    "Noncharacters \ufffe\uffff gone",
]


def title_as_written(response: Any) -> str:
    """The newest entry's title exactly as the document states it. (feedparser guesses whether
    an RSS title is HTML, so a literal "&gt;" in a title reads back as ">"; the XML is exact.)"""
    if response.headers["content-type"].startswith("application/feed+json"):
        return str(response.json()["items"][0]["title"])
    root = ET.fromstring(response.content)
    if root.tag == "rss":
        return root.findtext("channel/item/title") or ""
    return html.unescape(root.findtext(f"{ATOM}entry/{ATOM}title") or "")  # type="html"


@pytest.mark.parametrize("title", HOSTILE_TITLES)
@pytest.mark.parametrize("name", FEED_FILES)
def test_hostile_titles_and_bodies_stay_valid(
    client: TestClient, engine: Engine, title: str, name: str
) -> None:
    body = f"{title}\n\n`]]>` in code, <b>raw</b> & **bold** {title}"
    add_post(engine, title=title, body=body, tags=[title[:20] + " tag"])
    response = client.get(f"/{name}")
    assert response.status_code == 200
    entry = parse(response)[0]  # feedparser (or the JSON Feed rules) accept it
    assert title_as_written(response) == title.replace("\ufffe", "").replace("\uffff", "")
    content = entry["content"]
    assert "<script>" not in content and "<b>raw</b>" not in content
    assert "<strong>bold</strong>" in content


def test_control_characters_from_old_data_are_stripped(client: TestClient, engine: Engine) -> None:
    """The API refuses control characters, but imported or legacy rows may hold them."""
    post = add_post(engine)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE posts SET title = :t, body_html = :b, excerpt = :e WHERE id = :id"),
            {
                "t": "Bell\x07 and \x1bescape",
                "b": "<p>nul-free \x0b\x0c body</p>",
                "e": "x\x01y",
                "id": post.id,
            },
        )
    for name in FEED_FILES:
        entry = parse(client.get(f"/{name}"))[0]
        assert entry["title"] == "Bell and escape"
        assert "\x0b" not in entry["content"]


def test_feed_size_deleted_and_unknown(
    client: TestClient, engine: Engine, essays: list[posts.Post]
) -> None:
    client.app.state.settings.feed_size = 2  # type: ignore[attr-defined]
    assert len(client.get("/feed.json").json()["items"]) == 2
    with db.write_session(engine) as session:
        posts.delete_post(session, essays[2].id)  # type: ignore[arg-type]
    ids = [item["id"] for item in client.get("/feed.json").json()["items"]]
    assert ids == [f"{SITE_URL}/read/{essays[1].id}", f"{SITE_URL}/read/{essays[0].id}"]


# NUL reached PostgreSQL (which refuses it in text) and came back as a 503; the rest are
# other things no slug can be.
HOSTILE_SLUGS = ["%00", "a%00b", "%ED%A0%80", "%C3%A9", "QQQ", "-qqq", "x" * 300]


@pytest.mark.parametrize(
    "path",
    [f"/{kind}/nope/{name}" for kind in ("tags", "stories") for name in FEED_FILES]
    + [
        f"/{kind}/{slug}/{FEED_FILES[n % len(FEED_FILES)]}"
        for kind in ("tags", "stories")
        for n, slug in enumerate(HOSTILE_SLUGS)
    ],
)
def test_unknown_tag_or_story_is_404(
    client: TestClient, essays: list[posts.Post], path: str
) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("name", FEED_FILES)
def test_if_none_match_star_does_not_hide_an_unknown_feed(
    uncached_client: TestClient, essays: list[posts.Post], name: str
) -> None:
    star = {"If-None-Match": "*"}
    # "*" answered 304 for the feed of any tag or story, known or not.
    assert uncached_client.get(f"/tags/nope/{name}", headers=star).status_code == 404
    assert uncached_client.get(f"/stories/nope/{name}", headers=star).status_code == 404
    assert uncached_client.get(f"/tags/qqq/{name}", headers=star).status_code == 304
    assert uncached_client.get(f"/{name}", headers=star).status_code == 304


def test_empty_site_still_serves_valid_feeds(client: TestClient) -> None:
    for name in FEED_FILES:
        response = client.get(f"/{name}")
        assert response.status_code == 200
        assert parse(response) == []


# --- conditional GET ----------------------------------------------------------------------------


@pytest.fixture
def statements(uncached_client: TestClient) -> Iterator[list[str]]:
    """Every SQL statement the app's engine runs (transaction control left out)."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not re.match(r"\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE)", statement, re.I):
            seen.append(statement)

    engine = uncached_client.app.state.engine  # type: ignore[attr-defined]
    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


@pytest.mark.parametrize("path", ALL_FEEDS + ["/sitemap.xml"])
def test_304_costs_one_query_and_no_rendering(
    uncached_client: TestClient, essays: list[posts.Post], statements: list[str], path: str
) -> None:
    client = uncached_client
    first = client.get(path)
    assert first.status_code == 200
    for header in ("etag", "last-modified"):
        assert first.headers[header]
    assert (
        first.headers["cache-control"]
        == "public, max-age=60, s-maxage=300, stale-while-revalidate=600"
    )
    statements.clear()
    again = client.get(path, headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == first.headers["etag"]
    assert len(statements) == 1 and "site_state" in statements[0], statements

    statements.clear()
    since = client.get(path, headers={"If-Modified-Since": first.headers["last-modified"]})
    assert since.status_code == 304 and since.content == b""
    assert len(statements) == 1, statements


def test_etag_changes_on_every_write_and_only_then(
    client: TestClient, engine: Engine, essays: list[posts.Post]
) -> None:
    def etag() -> str:
        return client.get("/feed.xml").headers["etag"]

    def changed_since(held: str) -> bool:
        """What a client that only sends If-Modified-Since learns."""
        answer = client.get("/feed.xml", headers={"If-Modified-Since": held})
        assert answer.status_code in (200, 304)
        return answer.status_code == 200

    seen = {etag()}
    assert etag() in seen  # reading changes nothing
    assert client.get("/atom.xml").headers["etag"] not in seen  # one ETag per document
    held = client.get("/feed.xml").headers["last-modified"]
    assert not changed_since(held)

    with db.write_session(engine) as session:  # an identical replacement is not a change
        posts.update_post(
            session,
            essays[0].id,
            sample_input(cycle=900, published_at="2026-04-01T10:00:00Z"),
            "Workshop",
        )  # type: ignore[arg-type]
    assert etag() in seen and not changed_since(held)

    add_post(engine, cycle=903, title="A New Essay")
    assert etag() not in seen
    seen.add(etag())
    assert changed_since(held)

    with db.write_session(engine) as session:
        posts.update_post(
            session, essays[0].id, sample_input(cycle=900, title="Edited"), "Workshop"
        )  # type: ignore[arg-type]
    assert etag() not in seen
    seen.add(etag())
    assert changed_since(held)  # within the same second too

    with db.write_session(engine) as session:
        posts.delete_post(session, essays[1].id)  # type: ignore[arg-type]
    assert etag() not in seen
    old = client.get("/feed.xml", headers={"If-None-Match": next(iter(seen))})
    assert old.status_code == 200 and old.content


def test_last_modified_is_never_later_than_date_and_never_hides_a_change(
    client: TestClient, engine: Engine, essays: list[posts.Post]
) -> None:
    """Writes faster than one a second put the change time ahead of the clock: Last-Modified
    is then left out (RFC 9110 section 8.8.2.1: never later than Date) until the clock has
    passed it, and comes back in the stored copy too; a client holding an older one sees
    every change."""
    held = client.get("/feed.xml").headers["last-modified"]
    for cycle in (910, 911, 912, 913):
        add_post(engine, cycle=cycle, title=f"Burst {cycle}")

    def last_modified() -> str | None:
        answer = client.get("/feed.xml")
        sent = answer.headers.get("last-modified")
        if sent is not None:  # what the server's Date says, a second or so late at most
            assert parsedate_to_datetime(sent).timestamp() <= time.time() - 1
        return sent

    assert last_modified() is None  # the change time is seconds ahead of the clock
    assert client.get("/feed.xml").headers["x-cache"] == "hit"
    since = client.get("/feed.xml", headers={"If-Modified-Since": held})
    assert since.status_code == 200
    while (sent := last_modified()) is None:  # the same version, once the clock is past it
        time.sleep(0.2)
    assert parsedate_to_datetime(sent) > parsedate_to_datetime(held)
    again = client.get("/feed.xml", headers={"If-Modified-Since": sent})
    assert again.status_code == 304 and again.headers["last-modified"] == sent


def test_stale_validators_get_the_full_document(
    client: TestClient, essays: list[posts.Post]
) -> None:
    assert client.get("/feed.xml", headers={"If-None-Match": '"v0-nope"'}).status_code == 200
    assert (
        client.get(
            "/feed.xml", headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}
        ).status_code
        == 200
    )
    assert client.get("/feed.xml", headers={"If-Modified-Since": "not a date"}).status_code == 200
    etag = client.get("/feed.xml").headers["etag"]
    both = {"If-None-Match": '"v0-nope"', "If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}
    assert client.get("/feed.xml", headers=both).status_code == 200  # If-None-Match wins
    strong = etag.removeprefix("W/")  # the same document: a weak comparison matches either
    for tags in (f'"x", {etag}', f'"x", {strong}'):
        assert client.get("/feed.xml", headers={"If-None-Match": tags}).status_code == 304


@pytest.mark.parametrize(
    "since",
    [
        "Mon, 01 Jan 99999999999 00:00:00 GMT",
        "Mon, 01 Jan 2024 99999999999:00:00 GMT",
        "Mon, 01 Jan 2024 00:00:00 +9999999999999999",
    ],
)
def test_a_date_past_any_calendar_is_ignored_like_any_bad_date(
    client: TestClient, uncached_client: TestClient, essays: list[posts.Post], since: str
) -> None:
    """An If-Modified-Since that no datetime can hold raised OverflowError where a bad date
    raises ValueError: a 500 from the response cache (at `workshop serve`'s front door too)
    and, with the cache off, from the feed's route. It is ignored, as any date that does not
    parse (RFC 9110 section 13.1.3): the whole feed."""
    for asking in (client, uncached_client):
        first = asking.get("/feed.xml")  # with the cache on, answered from memory after this
        assert first.headers["last-modified"]  # so that the date is read and compared
        answer = asking.get("/feed.xml", headers={"If-Modified-Since": since})
        assert answer.status_code == 200
        assert [entry["id"] for entry in parse(answer)] == [entry["id"] for entry in parse(first)]


def test_feed_etags_are_weak_as_the_bytes_differ_by_encoding(
    client: TestClient, essays: list[posts.Post]
) -> None:
    plain = client.get("/feed.xml", headers={"Accept-Encoding": "identity"})
    packed = client.get("/feed.xml", headers={"Accept-Encoding": "gzip"})
    assert packed.headers["content-encoding"] == "gzip" and "content-encoding" not in plain.headers
    assert plain.headers["etag"] == packed.headers["etag"]
    assert plain.headers["etag"].startswith('W/"')  # RFC 9110 8.8.3: a strong one must differ


@pytest.mark.parametrize(
    "changed",
    [
        {"site_name": "Market Minds"},
        {"site_url": "https://blog.example"},
        {"timezone": "Asia/Tokyo"},
    ],
)
@pytest.mark.parametrize("path", ["/feed.xml", "/sitemap.xml", "/", "/archive"])
def test_a_restart_with_other_site_settings_never_answers_304_with_the_old_document(
    settings: Settings, essays: list[posts.Post], path: str, changed: dict[str, str]
) -> None:
    def get(site: Settings, headers: dict[str, str] | None = None) -> Any:
        app = create_app(site)
        with TestClient(app, base_url=SITE_URL) as client:
            response = client.get(path, headers=headers)
        app.state.engine.dispose()
        return response

    before = get(settings)
    assert get(settings, {"If-None-Match": before.headers["etag"]}).status_code == 304
    after = get(settings.model_copy(update=changed), {"If-None-Match": before.headers["etag"]})
    assert after.status_code == 200 and after.headers["etag"] != before.headers["etag"]


def test_head_is_answered(client: TestClient, essays: list[posts.Post]) -> None:
    response = client.head("/atom.xml")
    assert response.status_code == 200
    assert response.headers["etag"]


def test_feeds_are_a_pure_function_of_path_and_version(
    client: TestClient, essays: list[posts.Post]
) -> None:
    for path in ALL_FEEDS:
        assert client.get(path).content == client.get(path).content


def test_json_is_well_formed_with_hostile_text(client: TestClient, engine: Engine) -> None:
    add_post(engine, title='Quote " backslash \\ and </script>', body="x")
    raw = client.get("/feed.json").content.decode()
    assert json.loads(raw)["items"][0]["title"] == 'Quote " backslash \\ and </script>'
