"""Full-text search (SQLite FTS5, PostgreSQL tsvector): ranking, snippets, sync, hostile input."""

import lxml.html
import pytest
from conftest import add_post, sample_input
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from app import db, posts, search

HTML = {"accept": "text/html"}


def results(client: TestClient, q: str) -> tuple[list[str], lxml.html.HtmlElement]:
    response = client.get("/search", params={"q": q}, headers=HTML)
    assert response.status_code == 200, response.text[:300]
    doc = lxml.html.fromstring(response.text)
    return [
        " ".join(a.text_content().split()) for a in doc.xpath("//ol[@class='entries']//h3/a")
    ], doc


def test_ranked_title_first_with_highlighted_snippet(client: TestClient, engine: Engine) -> None:
    add_post(engine, cycle=1, title="Notes on rates", body="Volatility was mentioned once.")
    add_post(engine, cycle=2, title="Volatility Returns", body="Volatility rose, volatility fell.")
    titles, doc = results(client, "volatility")
    assert titles == ["Volatility Returns", "Notes on rates"]
    marks = doc.xpath("//p[contains(@class,'snippet')]//mark/text()")
    assert marks and all(m.lower() == "volatility" for m in marks)


def test_stemming_and_all_words_must_match(client: TestClient, engine: Engine) -> None:
    add_post(engine, cycle=1, title="Rotation", body="Investors were rotating into energy.")
    add_post(engine, cycle=2, title="Energy only", body="Energy rallied.")
    assert results(client, "rotate")[0] == ["Rotation"]
    assert results(client, "energy rotating")[0] == ["Rotation"]
    assert sorted(results(client, "energy")[0]) == ["Energy only", "Rotation"]


def test_index_follows_create_edit_delete(client: TestClient, engine: Engine) -> None:
    post = add_post(engine, body="A word: zebra.")
    assert results(client, "zebra")[0] == [post.title]
    with db.write_session(engine) as session:
        posts.update_post(session, post.id, sample_input(body="Now about giraffes."), "Workshop")  # type: ignore[arg-type]
    assert results(client, "zebra")[0] == []
    assert results(client, "giraffes")[0] == [post.title]
    with db.write_session(engine) as session:
        posts.delete_post(session, post.id)  # type: ignore[arg-type]
    assert results(client, "giraffes")[0] == []


def test_snippet_escapes_the_body(client: TestClient, engine: Engine) -> None:
    add_post(engine, body="Danger <script>alert('x')</script> lurks <img src=x onerror=alert(1)>.")
    response = client.get("/search", params={"q": "danger"}, headers=HTML)
    doc = lxml.html.fromstring(response.text)
    assert not doc.xpath("//main//script") and not doc.xpath("//*[@onerror]")
    # shown as text (SQLite) or dropped by ts_headline's tag parser (PostgreSQL), never as markup
    snippet = doc.xpath("//p[contains(@class,'snippet')]")[0]
    assert "lurks" in snippet.text_content() and not snippet.xpath(".//*[not(self::mark)]")


@pytest.mark.parametrize("body", ["Danger \ue000forged\ue001 here.", "Danger \ue001 \ue000 here."])
def test_body_cannot_forge_highlights(client: TestClient, engine: Engine, body: str) -> None:
    # The highlight marks were private-use characters a body may hold, so its own U+E000 and
    # U+E001 became <mark> and </mark> in the snippet.
    add_post(engine, body=body)
    _, doc = results(client, "danger")
    assert doc.xpath("//p[contains(@class,'snippet')]//mark/text()") == ["Danger"]


HOSTILE = [
    '"',
    '"unterminated',
    "a OR",
    "NOT",
    "AND AND",
    "NEAR(a b",
    "title:x",
    "*",
    "a*",
    "^x",
    "'; DROP TABLE posts; --",
    "1) OR (1=1",
    "!!!",
    "&|!:*()<>",
    "\\",
    "%",
    "\u0000x",
    "emoji 🚀 text",
    "x" * 10_000,
    "word " * 2_000,
    "-breadth",
    "{title}: x",
    "ÄÖÜ déjà",
]


@pytest.mark.parametrize("q", HOSTILE, ids=lambda q: repr(q[:20]))
def test_hostile_queries_never_fail(client: TestClient, engine: Engine, q: str) -> None:
    add_post(engine)
    response = client.get("/search", params={"q": q}, headers=HTML)
    assert response.status_code == 200
    doc = lxml.html.fromstring(response.text)
    assert doc.xpath("//main//h1")
    if not search.parse_query(q).terms:
        assert "Type some words" in doc.xpath("string(//p[@class='notice'])")


def test_long_query_is_shortened_with_a_message(client: TestClient, engine: Engine) -> None:
    add_post(engine)
    _, doc = results(client, "breadth " * 500)
    assert "only its first 12 words were used" in doc.xpath("string(//p[@class='notice'])")
    _, doc = results(client, "breadth" + " " * 5000)
    assert "only its first 1 word was used" in doc.xpath("string(//p[@class='notice'])")


def test_parse_query_keeps_only_words() -> None:
    query = search.parse_query('"AND" OR title:breadth NEAR(x* NOT and')
    # Operators written in capitals are ignored, not words every result must hold.
    assert query.terms == ["title", "breadth", "x", "and"]
    assert search._sqlite_match(query.terms).count('"') == 8


def test_operator_words_do_not_hide_the_results(client: TestClient, engine: Engine) -> None:
    add_post(engine, title="Flibbertigibbet", body="Quixotically priced options.")
    for q in ("flibbertigibbet AND quixotically", "flibbertigibbet OR quixotically", "NOT options"):
        assert results(client, q)[0] == ["Flibbertigibbet"], q


def test_every_match_shows_on_exactly_one_page(
    client: TestClient, engine: Engine, settings
) -> None:  # type: ignore[no-untyped-def]
    """Essays of equal score (the same words) came out on two pages and on none, as the
    ranked window grew page by page and was cut in another order than it was chosen."""
    count = 3 * settings.page_size + 5
    for i in range(count):
        day = 1 + (i * 11) % 28  # publication order unlike id order
        add_post(
            engine,
            cycle=i,
            title="Bond note",
            body="bonds",
            published_at=f"2026-03-{day:02d}T15:04:00Z",
        )
    seen: list[str] = []
    path: str | None = "/search?q=bonds"
    while path:
        doc = lxml.html.fromstring(client.get(path, headers=HTML).text)
        seen += [str(h) for h in doc.xpath("//ol[@class='entries']//h3/a/@href")]
        nxt = doc.xpath("//nav[@class='pager']/a[@rel='next']/@href")
        path = str(nxt[0]) if nxt else None
    assert len(seen) == count and len(set(seen)) == count


def test_paging_and_empty_query(client: TestClient, engine: Engine, settings) -> None:  # type: ignore[no-untyped-def]
    for i in range(settings.page_size + 3):
        add_post(engine, cycle=i, title=f"Bond note {i}", body="bonds")
    first, doc = results(client, "bonds")
    assert len(first) == settings.page_size
    nxt = doc.xpath("//nav[@class='pager']/a[@rel='next']/@href")[0]
    second = client.get(nxt, headers=HTML)
    assert len(lxml.html.fromstring(second.text).xpath("//ol[@class='entries']/li")) == 3
    for page in ("0", "-1", "abc", "99999999"):
        assert client.get("/search", params={"q": "bonds", "page": page}).status_code == 200
    assert results(client, "")[0] == []


def test_search_service_directly(engine: Engine) -> None:
    add_post(engine, title="Credit spreads widen", body="High yield credit spreads widened.")
    with Session(engine) as session:
        hits = search.search(session, search.parse_query("spreads"), 5)
    assert [h.title for h in hits] == ["Credit spreads widen"]
    assert "<mark>" in hits[0].snippet and hits[0].published_at.tzinfo is not None


def test_only_the_newest_matches_are_ranked(engine: Engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Ranking every match of a common word cost 0.2-0.6 s at 100,000 essays: both databases rank
    the newest SEARCH_CANDIDATES matches (by publication on PostgreSQL, by id on SQLite)."""
    add_post(
        engine,
        cycle=1,
        title="Volatility, volatility",
        body="Volatility everywhere.",
        published_at="2026-01-05T15:04:00Z",
    )
    for n in range(3):
        add_post(
            engine,
            cycle=10 + n,
            title=f"Rates {n}",
            body="Volatility once.",
            published_at=f"2026-03-0{n + 1}T15:04:00Z",
        )
    with Session(engine) as session:
        everything = [h.title for h in search.search(session, search.parse_query("volatility"), 10)]
        monkeypatch.setattr(search, "SEARCH_CANDIDATES", 3)
        newest = [h.title for h in search.search(session, search.parse_query("volatility"), 10)]
    assert everything[0] == "Volatility, volatility" and len(everything) == 4
    assert sorted(newest) == ["Rates 0", "Rates 1", "Rates 2"]  # the oldest match is left out
