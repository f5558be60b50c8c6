"""The permalink page and its redirects, as a reader's browser meets them."""

from html.parser import HTMLParser

import httpx
from conftest import add_post
from htmlcheck import executable_parts

from app import posts
from app.db import write_session

SLUG = "breadth-is-thinning-under-a-calm-index"


class TextOf(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.h1 = ""
        self._in_h1 = False
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
        self._in_h1 = self._in_h1 or tag == "h1"

    def handle_endtag(self, tag):  # type: ignore[no-untyped-def]
        if tag == "h1":
            self._in_h1 = False

    def handle_data(self, data):  # type: ignore[no-untyped-def]
        self.text.append(data)
        if self._in_h1:
            self.h1 += data


def parse(html: str) -> TextOf:
    parser = TextOf()
    parser.feed(html)
    return parser


def test_essay_page_shows_title_author_cycle_line_body_and_debate(engine, client) -> None:
    post = add_post(engine)
    page = client.get(f"/read/{post.id}/{SLUG}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    parsed = parse(page.text)
    text = " ".join(" ".join(parsed.text).split())
    assert parsed.h1.strip() == "Breadth Is Thinning Under a Calm Index"
    assert "Cycle 900 | April 5, 2026 — 8:04 AM" in text
    assert "Workshop" in text and "Flow saw outflows" in text
    for figure in ("42%", "Macro", "35%", "Flow", "60%", "Contrarian", "30%"):
        assert figure in text


def test_redirects_to_canonical(engine, client) -> None:
    post = add_post(engine)
    canonical = f"/read/{post.id}/{SLUG}"
    for path in (f"/read/{post.id}", f"/read/{post.id}/", f"/read/{post.id}/wrong-slug"):
        response = client.get(path)
        assert response.status_code == 301, path
        assert response.headers["location"].endswith(canonical)


def test_old_url_redirects_after_title_edit(engine, client) -> None:
    from conftest import sample_input

    post = add_post(engine)
    with write_session(engine) as session:
        posts.update_post(session, post.id, sample_input(title="Breadth Snaps Back"), "Workshop")
    response = client.get(f"/read/{post.id}/{SLUG}")
    assert response.status_code == 301
    assert response.headers["location"].endswith(f"/read/{post.id}/breadth-snaps-back")


def test_unknown_is_404_and_deleted_is_410(engine, client) -> None:
    post = add_post(engine)
    assert client.get("/read/999999/x").status_code == 404
    assert client.get("/read/999999").status_code == 404
    with write_session(engine) as session:
        posts.delete_post(session, post.id)
    gone = client.get(f"/read/{post.id}/{SLUG}", headers={"accept": "text/html"})
    assert gone.status_code == 410 and "<html" in gone.text


def test_emoji_only_title_has_a_working_permalink(engine, client) -> None:
    post = add_post(engine, title="🚀📉🚀", cycle=77)
    assert post.slug == "essay"
    assert client.get(f"/read/{post.id}/essay").status_code == 200


def test_hostile_title_is_escaped(engine, client) -> None:
    title = '<script>alert(1)</script><img src=x onerror=alert(1)> "quoted" & done'
    post = add_post(engine, title=title, body="[x](javascript:alert(1)) <script>bad()</script>")
    page = client.get(f"/read/{post.id}/{post.slug}")
    assert page.status_code == 200
    assert [
        p for p in executable_parts(page.text, {"script", "link", "meta"}) if "script" not in p
    ] == []
    assert parse(page.text).h1.strip() == title
    assert "<script>alert(1)</script>" not in page.text and "<script>bad()" not in page.text


def test_home_links_newest_essays(engine, client) -> None:
    add_post(engine, cycle=1, title="Older One", published_at="2026-01-01T00:00:00Z")
    add_post(engine, cycle=2, title="Newer One", published_at="2026-02-01T00:00:00Z")
    page = client.get("/")
    assert page.status_code == 200
    assert page.text.index("Newer One") < page.text.index("Older One")


def test_cycle_redirects_to_its_essay(engine, client) -> None:
    post = add_post(engine)
    response = client.get("/cycle/900")
    assert response.status_code in (301, 302, 307, 308)
    assert response.headers["location"].endswith(f"/read/{post.id}/{SLUG}")
    assert client.get("/cycle/12345").status_code == 404


def test_real_server_serves_health_and_permalink(engine, live_server) -> None:
    post = add_post(engine)
    assert httpx.get(live_server.url + "/healthz").status_code == 200
    assert httpx.get(live_server.url + "/readyz").json() == {"status": "ready"}
    page = httpx.get(f"{live_server.url}/read/{post.id}")
    assert page.status_code == 301
