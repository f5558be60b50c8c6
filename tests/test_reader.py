"""Reader pages through the real app on a real database: content, head, links, HTTP caching."""

import base64
import json
import re
from urllib.parse import parse_qs, urlsplit

import lxml.html
import pytest
from conftest import (
    SITE_URL,
    add_post,
    as_if_written_a_minute_ago,
    one_published_one_withdrawn,
    sample_input,
)
from fastapi.testclient import TestClient
from htmlcheck import executable_parts
from sqlalchemy import Engine, event

from app import browse, db, posts
from app.routes import reader

HTML = {"accept": "text/html"}


def page(client: TestClient, path: str, status: int = 200) -> lxml.html.HtmlElement:
    response = client.get(path, headers=HTML)
    assert response.status_code == status, (path, response.text[:500])
    assert response.headers["content-type"].startswith("text/html")
    return lxml.html.fromstring(response.text)


def texts(doc: lxml.html.HtmlElement, xpath: str) -> list[str]:
    return [" ".join(el.text_content().split()) for el in doc.xpath(xpath)]


def hrefs(doc: lxml.html.HtmlElement, xpath: str) -> list[str]:
    return [str(h) for h in doc.xpath(xpath + "/@href")]


def many(engine: Engine, count: int) -> list[posts.Post]:
    return [
        add_post(
            engine,
            title=f"Essay number {i}",
            cycle=1000 + i,
            published_at=f"2026-03-{1 + i % 28:02d}T{10 + i // 28:02d}:00:00Z",
            tags=["QQQ"],
            stories=[{"title": "Long Story", "status": f"step {i}"}],
        )
        for i in range(count)
    ]


# --- the essay page -------------------------------------------------------------------------------


def test_essay_page_shows_everything(client: TestClient, engine: Engine) -> None:
    older = add_post(engine, cycle=899, title="Older One", published_at="2026-04-04T10:00:00Z")
    post = add_post(engine)
    newer = add_post(
        engine,
        cycle=901,
        title="Newer One",
        published_at="2026-04-06T10:00:00Z",
        debate={
            "outcome": "consensus",
            "conviction": 0.8,
            "minds": [{"name": "Macro", "confidence": 0.9}],
        },
    )
    doc = page(client, f"/read/{post.id}/{post.slug}")
    assert texts(doc, "//main//h1") == ["Breadth Is Thinning Under a Calm Index"]
    assert texts(doc, "//*[@class='cycle-line']") == ["Cycle 900 | April 5, 2026 — 8:04 AM"]
    assert "Workshop" in texts(doc, "//*[@class='byline']")[0]
    assert doc.xpath("//div[contains(@class,'prose')]//em/text()") == ["breadth"]
    # debate panel: outcome, conviction, each mind with a labelled bar
    panel = doc.xpath("//section[contains(@class,'debate')]")[0]
    assert texts(panel, ".//dd[contains(@class,'outcome')]") == ["split"]
    assert "42%" in texts(panel, ".//div[@class='conviction']")[0]
    minds = [
        (m.xpath(".//*[@class='mind-name']")[0].text, m.xpath(".//*[@class='value']")[0].text)
        for m in panel.xpath(".//li[contains(@class,'mind')]")
    ]
    assert minds == [("Macro", "35%"), ("Flow", "60%"), ("Contrarian", "30%")]
    widths = panel.xpath(".//li[contains(@class,'mind')]//span[@class='bar']/span/@style")
    assert widths == ["width: 35.0%", "width: 60.0%", "width: 30.0%"]
    # tags, stories, previous / next
    assert hrefs(doc, "//ul[@class='tags']//a") == ["/tags/qqq", "/tags/breadth"]
    assert hrefs(doc, "//ul[@class='stories']//a") == ["/stories/narrow-leadership"]
    assert hrefs(doc, "//nav[contains(@class,'neighbours')]//a[@rel='prev']") == [
        f"/read/{older.id}/{older.slug}"
    ]
    assert hrefs(doc, "//nav[contains(@class,'neighbours')]//a[@rel='next']") == [
        f"/read/{newer.id}/{newer.slug}"
    ]
    # landmarks and one h1
    assert doc.xpath("//header") and doc.xpath("//main") and doc.xpath("//footer")
    assert len(doc.xpath("//h1")) == 1


HEADINGS_BODY = """# What the minds argued

Macro opened.

## The case for flow

### The outflows

#### By sector

##### Tech

###### Semis

####### not a heading, seven hashes

```
# a comment in code, not a heading
<h1>nor this</h1>
```

A `<h2>` in code and a &lt;h3&gt; in text stay text.
"""


def test_body_headings_sit_below_the_title(client: TestClient, engine: Engine) -> None:
    """The title is the page's one h1: a body's `#` heading is an h2, and every level below
    moves down one (h6 stays h6), so a screen reader's heading list nests under the title."""
    post = add_post(engine, body=HEADINGS_BODY)
    doc = page(client, f"/read/{post.id}/{post.slug}")
    assert texts(doc, "//h1") == [post.title]
    prose = doc.xpath("//div[contains(@class,'prose')]")[0]
    headings = [
        (h.tag, " ".join(h.text_content().split()))
        for h in prose.xpath(
            ".//*[self::h1 or self::h2 or self::h3 or self::h4 or self::h5 or self::h6]"
        )
    ]
    assert headings == [
        ("h2", "What the minds argued"),
        ("h3", "The case for flow"),
        ("h4", "The outflows"),
        ("h5", "By sector"),
        ("h6", "Tech"),
        ("h6", "Semis"),
    ]
    assert prose.xpath(".//pre/code/text()") == [
        "# a comment in code, not a heading\n<h1>nor this</h1>\n"
    ]
    assert "A <h2> in code and a <h3> in text stay text." in texts(prose, ".//p")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("## Flow\n\ntext\n\n### Outflows\n\ntext", ["h2", "h3"]),
        ("### Flow\n\ntext\n\n#### Outflows\n\ntext", ["h2", "h3"]),
        ("## Flow\n\ntext\n\n#### Outflows\n\ntext", ["h2", "h4"]),
    ],
    ids=["h2 stays", "h3 moves up", "a skipped level stays skipped"],
)
def test_body_top_heading_is_h2(
    client: TestClient, engine: Engine, body: str, expected: list[str]
) -> None:
    """The body's top level becomes h2 whatever the author began with, so its sections sit
    beside "The debate" (an h2), not under it; the levels below keep their distance."""
    post = add_post(engine, body=body)
    doc = page(client, f"/read/{post.id}/{post.slug}")
    prose = doc.xpath("//div[contains(@class,'prose')]")[0]
    assert [h.tag for h in prose.xpath(".//*[self::h1 or self::h2 or self::h3 or self::h4]")] == (
        expected
    )


FOOTNOTES_BODY = """Flow saw outflows.[^flow] Macro disagreed.[^macro] Flow held its view.[^flow]

[^flow]: Five days running.
[^macro]: Rates, not flows.
"""


def test_footnote_links_have_names_a_screen_reader_can_say(
    client: TestClient, engine: Engine
) -> None:
    """A reference is "Footnote 1" and a link back "Back to reference 1", not "[1]" and "↩︎";
    each link still leads to the other (the note's second reference has a back-link too)."""
    post = add_post(engine, body=FOOTNOTES_BODY)
    doc = page(client, f"/read/{post.id}/{post.slug}")
    refs = doc.xpath("//div[contains(@class,'prose')]//sup[@class='footnote-ref']/a")
    assert [(a.get("aria-label"), a.text_content()) for a in refs] == [
        ("Footnote 1", "[1]"),
        ("Footnote 2", "[2]"),
        ("Footnote 1", "[1]"),  # the renderer's own text here is "[1:1]"
    ]
    backs = doc.xpath("//section[@class='footnotes']//a[@class='footnote-backref']")
    assert [a.get("aria-label") for a in backs] == [
        "Back to reference 1 (occurrence a)",
        "Back to reference 1 (occurrence b)",
        "Back to reference 2",
    ]
    for a in refs:  # each reference leads to its note, and the note's back-link to it
        (note,) = doc.xpath(f"//li[@id='{a.get('href')[1:]}']")
        assert f"#{a.get('id')}" in note.xpath(".//a[@class='footnote-backref']/@href")
    assert [a.get("href") for a in backs] == [
        "#" + a.get("id") for a in (refs[0], refs[2], refs[1])
    ]


NOTES_UNDER_SECTIONS = """# Flow

Outflows.[^flow]

## By sector

Tech led.[^flow]

[^flow]: Five days running.
"""


@pytest.mark.parametrize(
    ("body", "outline"),
    [
        (FOOTNOTES_BODY, [("h2", "Notes")]),
        (NOTES_UNDER_SECTIONS, [("h2", "Flow"), ("h3", "By sector"), ("h2", "Notes")]),
    ],
    ids=["no headings", "after sections"],
)
def test_the_notes_have_a_heading_beside_the_bodys_sections(
    client: TestClient, engine: Engine, body: str, outline: list[tuple[str, str]]
) -> None:
    """The notes' section had no heading: nothing in a screen reader's list of headings or
    landmarks, nor for a sighted reader, said where the notes begin. "Notes" names it, an h2
    as the body's top level is (`headings_below_title`): the notes are the whole essay's, not
    a part of its last section."""
    post = add_post(engine, body=body)
    doc = page(client, f"/read/{post.id}/{post.slug}")
    prose = doc.xpath("//div[contains(@class,'prose')]")[0]
    headings = prose.xpath(".//*[self::h1 or self::h2 or self::h3 or self::h4]")
    assert [(h.tag, h.text_content()) for h in headings] == outline
    (notes,) = prose.xpath(".//section[@class='footnotes']")
    title, listed = notes.getchildren()
    assert (title.tag, title.text_content(), listed.tag) == ("h2", "Notes", "ol")
    assert notes.get("aria-labelledby") == title.get("id")  # a region landmark, "Notes"
    assert doc.xpath(f"//*[@id='{title.get('id')}']") == [title]


def test_a_notes_links_back_to_each_reference_look_different(
    client: TestClient, engine: Engine
) -> None:
    """A note cited twice had two links back drawn alike, "↩︎ ↩︎": a sighted reader could not
    tell which leads where. They read "↩︎ a b", the arrow hidden from screen readers (each
    link's name says where it leads); a note cited once keeps its one "↩︎"."""
    post = add_post(engine, body=FOOTNOTES_BODY)
    doc = page(client, f"/read/{post.id}/{post.slug}")
    notes = doc.xpath("//section[@class='footnotes']//li[@class='footnote-item']")
    backs = [
        [
            (a.text_content(), a.get("aria-label"))
            for a in note.xpath(".//a[@class='footnote-backref']")
        ]
        for note in notes
    ]
    assert backs == [
        [("a", "Back to reference 1 (occurrence a)"), ("b", "Back to reference 1 (occurrence b)")],
        [("\u21a9\ufe0e", "Back to reference 2")],
    ]
    (arrow,) = notes[0].xpath(".//*[@aria-hidden='true']")
    assert arrow.text_content() == "\u21a9\ufe0e"
    (prose,) = doc.xpath("//div[contains(@class,'prose')]")
    assert executable_parts(lxml.html.tostring(prose, encoding="unicode")) == []


def test_new_and_absent_minds(client: TestClient, engine: Engine) -> None:
    add_post(engine, cycle=899, published_at="2026-04-04T10:00:00Z", title="Before")
    post = add_post(
        engine,
        debate={
            "outcome": "contested",
            "conviction": 0.5,
            "minds": [{"name": "Macro", "confidence": 0.2}, {"name": "Vol", "confidence": 0.7}],
        },
    )
    doc = page(client, f"/read/{post.id}/{post.slug}")
    rows = {
        texts(li, ".//*[@class='mind-name']")[0]: texts(li, ".//*[@class='value']")[0]
        for li in doc.xpath("//li[contains(@class,'mind')]")
    }
    assert rows == {"Macro": "20%", "Vol": "70%", "Flow": "absent", "Contrarian": "absent"}


def test_post_without_debate(client: TestClient, engine: Engine) -> None:
    post = add_post(engine, debate=None, tags=[], stories=[])
    doc = page(client, f"/read/{post.id}/{post.slug}")
    assert not doc.xpath("//section[contains(@class,'debate')]")
    assert texts(doc, "//*[contains(@class,'no-debate')]") == ["No debate recorded for this essay."]


def test_head_canonical_sharing_and_feeds(client: TestClient, engine: Engine) -> None:
    post = add_post(engine)
    doc = page(client, f"/read/{post.id}/{post.slug}")
    url = f"{SITE_URL}/read/{post.id}/{post.slug}"
    assert doc.xpath("//link[@rel='canonical']/@href") == [url]
    assert doc.xpath("//meta[@property='og:url']/@content") == [url]
    assert doc.xpath("//meta[@property='og:type']/@content") == ["article"]
    assert doc.xpath("//meta[@name='twitter:card']/@content") == ["summary"]
    feeds = dict(
        zip(
            doc.xpath("//link[@rel='alternate']/@type"),
            doc.xpath("//link[@rel='alternate']/@href"),
            strict=True,
        )
    )
    assert feeds == {
        "application/rss+xml": f"{SITE_URL}/feed.xml",
        "application/atom+xml": f"{SITE_URL}/atom.xml",
        "application/feed+json": f"{SITE_URL}/feed.json",
    }
    data = json.loads(doc.xpath("//script[@type='application/ld+json']/text()")[0])
    assert data["@type"] == "BlogPosting"
    assert data["headline"] == post.title
    assert data["url"] == url and data["mainEntityOfPage"]["@id"] == url
    assert data["author"]["name"] == "Workshop"
    assert data["datePublished"].startswith("2026-04-05T08:04:00")
    assert "dateModified" in data


@pytest.mark.parametrize(
    "path", ["/", "/archive", "/search", "/tags/qqq", "/stories/narrow-leadership"]
)
def test_every_page_has_canonical_and_feeds(client: TestClient, engine: Engine, path: str) -> None:
    add_post(engine)
    doc = page(client, path)
    assert doc.xpath("//link[@rel='canonical']/@href") == [SITE_URL + path]
    assert doc.xpath("//meta[@property='og:title']/@content")
    assert f"{SITE_URL}/feed.xml" in doc.xpath("//link[@rel='alternate']/@href")


@pytest.mark.parametrize("kind", ["tags/qqq", "stories/narrow-leadership"])
def test_tag_and_story_pages_link_their_feeds(
    client: TestClient, engine: Engine, kind: str
) -> None:
    add_post(engine)
    links = page(client, f"/{kind}").xpath("//link[@rel='alternate']/@href")
    for name in ("feed.xml", "atom.xml", "feed.json"):
        assert f"{SITE_URL}/{kind}/{name}" in links


HOSTILE_TITLES = [
    "</script><script>alert(1)</script>",
    "<!-- <script> & \u2028 \"quoted\" 'single'",
    "<img src=x onerror=alert(1)>",
]


@pytest.mark.parametrize("title", HOSTILE_TITLES)
def test_hostile_title_is_escaped_everywhere(
    client: TestClient, engine: Engine, title: str
) -> None:
    post = add_post(
        engine, title=title, tags=["<b>x</b>"], stories=[{"title": "<i>s</i>", "status": "<u>"}]
    )
    response = client.get(f"/read/{post.id}/{post.slug}", headers=HTML)
    doc = lxml.html.fromstring(response.text)
    scripts = doc.xpath("//script")
    assert len(scripts) == 1 and scripts[0].get("type") == "application/ld+json"
    raw = re.search(r'<script type="application/ld\+json">(.*?)</script>', response.text, re.S)
    assert raw and "<" not in raw.group(1) and ">" not in raw.group(1)
    assert json.loads(raw.group(1))["headline"] == title
    assert not doc.xpath("//img") and not doc.xpath("//*[@onerror]")
    assert texts(doc, "//main//h1") == [" ".join(title.split())]
    assert doc.xpath("//meta[@property='og:title']/@content")[0].startswith(title)


def test_hostile_body_runs_nothing(client: TestClient, engine: Engine) -> None:
    body = "<script>alert(1)</script>\n\n[x](javascript:alert(1)) <img src=x onerror=alert(2)>"
    post = add_post(engine, body=body)
    doc = page(client, f"/read/{post.id}/{post.slug}")
    assert len(doc.xpath("//script")) == 1
    assert not doc.xpath("//*[@onerror]") and not doc.xpath("//img")
    assert not [h for h in hrefs(doc, "//a") if h.lower().startswith("javascript")]


# --- permalinks, 404, 410, cycles -----------------------------------------------------------------


def test_redirects_and_errors(client: TestClient, engine: Engine) -> None:
    post = add_post(engine)
    canonical = f"/read/{post.id}/{post.slug}"
    for path in (f"/read/{post.id}", f"/read/{post.id}/", f"/read/{post.id}/wrong-slug"):
        response = client.get(path)
        assert (response.status_code, response.headers["location"]) == (301, canonical)
    assert client.get("/cycle/900").headers["location"] == canonical
    for path in (
        "/read/999",
        "/read/999/x",
        "/read/abc",
        "/read/99999999999999/x",
        "/cycle/5",
        "/cycle/99999999999999999999",
        "/tags/none",
        "/stories/none",
        "/archive/2026/13",
        "/archive/x/y",
        "/nowhere",
    ):
        doc = page(client, path, status=404)
        assert doc.xpath("//main//h1") and doc.xpath("//link[@rel='stylesheet']")
    with db.write_session(engine) as session:
        posts.delete_post(session, post.id)  # type: ignore[arg-type]
    doc = page(client, canonical, status=410)
    assert texts(doc, "//main//h1") == ["This essay was withdrawn"]
    assert page(client, "/").xpath("//ol[@class='entries']/li") == []


# What an error page must not show a reader: status codes, HTTP's words, the API's detail.
JARGON = re.compile(
    r"\b(error|[1-5][0-9]{2}|not found|method|allowed|GET|HEAD|PUT|cursor|database|post id)\b",
    re.IGNORECASE,
)


def reader_sees(doc: lxml.html.HtmlElement) -> str:
    """The error page's text as a reader sees it (the main content, in order), checked for the
    ways on every error page offers: a search box, the newest essays and the archive."""
    seen = " ".join(doc.xpath("//main")[0].text_content().split())
    assert not JARGON.search(seen), seen
    form = doc.xpath("//main//form[@role='search']")
    assert len(form) == 1 and form[0].get("action") == "/search" and form[0].get("method") == "get"
    assert form[0].xpath(".//input[@name='q']/@id") == form[0].xpath(".//label/@for") == ["q"]
    assert {"/", "/archive"} <= set(hrefs(doc, "//main//a"))
    return seen


@pytest.mark.parametrize(
    ("method", "path", "heading", "detail"),
    [
        ("GET", "/read/99999/x", "This essay doesn’t exist", "no post with id 99999"),
        ("GET", "/read/99999", "This essay doesn’t exist", "no post with id 99999"),
        ("GET", "/read/abc", "This essay doesn’t exist", "no essay 'abc'"),
        ("GET", "/cycle/5", "This essay doesn’t exist", "no essay for cycle 5"),
        ("GET", "/read/{gone}/{slug}", "This essay was withdrawn", "essay {gone} was withdrawn"),
        (
            "GET",
            "/cycle/901",
            "This essay was withdrawn",
            "essay {gone} (cycle 901) was withdrawn",
        ),
        ("GET", "/tags/nope", "This page doesn’t exist", "no tag 'nope'"),
        ("GET", "/stories/nope", "This page doesn’t exist", "no story 'nope'"),
        ("GET", "/archive/2026/13", "This page doesn’t exist", "no archive for 2026-13"),
        ("GET", "/nowhere", "This page doesn’t exist", "Not Found"),
        ("GET", "/static/nope.css", "This page doesn’t exist", "Not Found"),
        (
            "GET",
            "/?before=not-a-cursor",
            "This page of the list doesn’t exist",
            "the page link is not valid; start from the first page",
        ),
        (
            "PUT",
            "/archive",
            "This page can only be read",
            "PUT is not allowed here; allowed: GET, HEAD",
        ),
    ],
)
def test_error_pages_speak_to_readers_and_problems_to_api_clients(
    client: TestClient, engine: Engine, method: str, path: str, heading: str, detail: str
) -> None:
    _, gone = one_published_one_withdrawn(engine)
    path = path.format(gone=gone.id, slug=gone.slug)
    problem = client.request(method, path, headers={"Accept": "application/problem+json"})
    assert problem.headers["content-type"] == "application/problem+json"
    assert problem.json()["detail"] == detail.format(gone=gone.id)
    response = client.request(method, path, headers=HTML)
    assert response.status_code == problem.status_code  # the status is kept, only not shown
    assert response.headers["content-type"].startswith("text/html")
    doc = lxml.html.fromstring(response.text)
    assert texts(doc, "//main//h1") == [heading]
    assert texts(doc, "//title")[0].startswith(heading)
    # The page showed "Error 404" above the heading, and a 400's or 405's paragraph was the
    # API's detail ("PUT is not allowed here; allowed: GET, HEAD").
    seen = reader_sees(doc)
    assert seen.startswith(heading)
    assert problem.json()["detail"] not in seen


@pytest.mark.parametrize(
    ("path", "link", "target"),
    [
        ("/?after=not-a-cursor", "Start from the first page", "/"),
        ("/tags/qqq?before=not-a-cursor", "Start from the first page", "/tags/qqq"),
        ("/archive/2026/04?after=not-a-cursor", "Start from the first page", "/archive/2026/04"),
        (
            "/stories/narrow-leadership?before=x",
            "Start from the first page",
            "/stories/narrow-leadership",
        ),
    ],
)
def test_a_broken_page_link_leads_to_the_lists_first_page(
    client: TestClient, engine: Engine, path: str, link: str, target: str
) -> None:
    add_post(engine)
    doc = page(client, path, status=400)
    reader_sees(doc)
    assert [(a.text_content(), a.get("href")) for a in doc.xpath("//main//p/a")][0] == (
        link,
        target,
    )


def test_a_missing_essays_search_box_holds_the_words_of_its_link(
    client: TestClient, engine: Engine
) -> None:
    """A permalink whose number was mistyped or cut short still names the essay: its slug's
    words wait in the search box, a click from the essay."""
    add_post(engine)
    doc = page(client, "/read/99999/breadth-is-thinning-under-a-calm-index", status=404)
    reader_sees(doc)
    assert doc.xpath("//main//input[@name='q']/@value") == [
        "breadth is thinning under a calm index"
    ]
    hostile = '/read/99999/"><svg onload=alert(1)><img src=x onerror=alert(2)>'
    response = client.get(hostile, headers=HTML)
    assert response.status_code == 404
    assert executable_parts(response.text, {"link", "meta", "form"}) == []
    doc = lxml.html.fromstring(response.text)
    assert doc.xpath("//main//input[@name='q']/@value") == [
        "svg onload alert 1 img src x onerror alert 2"
    ]
    for path in ("/read/99999", "/cycle/5", "/tags/breadth-words"):  # no essay's words in it
        assert page(client, path, status=404).xpath("//main//input[@name='q']/@value") == [""]


def test_the_cycle_of_a_withdrawn_essay_is_gone_as_its_page_is(
    client: TestClient, engine: Engine
) -> None:
    _, gone = one_published_one_withdrawn(engine)  # cycle 901
    essay = f"/read/{gone.id}/{gone.slug}"
    # The cycle's lookup skipped withdrawn essays: 404, where the essay's own page says 410.
    for accept in ("text/html", "application/problem+json"):
        for _ in range(2):  # the second from the response cache
            by_cycle = client.get("/cycle/901", headers={"Accept": accept})
            by_page = client.get(essay, headers={"Accept": accept})
            assert (by_cycle.status_code, by_page.status_code) == (410, 410), accept
            for name in ("content-type", "cache-control", "vary"):
                assert by_cycle.headers[name] == by_page.headers[name], (accept, name)
    assert texts(page(client, "/cycle/901", status=410), "//main//h1") == texts(
        page(client, essay, status=410), "//main//h1"
    )
    problems = [client.get(path).json() for path in ("/cycle/901", essay)]
    assert [sorted(p) for p in problems] == [sorted(problems[1])] * 2
    assert [p["title"] for p in problems] == ["Post deleted"] * 2
    assert client.get("/cycle/902").status_code == 404  # a cycle without an essay
    again = sample_input(cycle=901, title="Back")
    with db.write_session(engine) as session:  # published again: the cycle leads to it
        posts.update_post(session, gone.id, again, "Workshop")  # type: ignore[arg-type]
    back = client.get("/cycle/901")
    assert (back.status_code, back.headers["location"]) == (302, f"/read/{gone.id}/back")


def test_redirects_and_error_pages_say_how_long_caches_keep_them(
    client: TestClient, engine: Engine
) -> None:
    post, gone = one_published_one_withdrawn(engine)
    # Without Cache-Control a browser keeps a 301 for good: a title edited and edited back
    # would send it around in a loop.
    for path in (f"/read/{post.id}/old-slug", f"/read/{post.id}", "/cycle/900"):
        response = client.get(path)
        assert response.status_code in (301, 302)
        assert response.headers["cache-control"] == reader.PAGE_CACHE_CONTROL, path
    # The same path answers an HTML page or problem+json by Accept: caches must key on it.
    for path, status in [("/read/999/x", 404), (f"/read/{gone.id}/{gone.slug}", 410)]:
        for accept in ("text/html", "application/json"):
            for _ in range(2):  # the second from the response cache
                response = client.get(path, headers={"accept": accept})
                assert response.status_code == status
                assert "Accept" in response.headers["vary"].split(", "), response.headers
                assert response.headers["cache-control"] == reader.PAGE_CACHE_CONTROL
    assert "vary" not in client.get("/api/v1/posts/999").headers  # the API is always JSON


@pytest.mark.parametrize("cache", ["on", "off"])
def test_pages_carry_a_security_policy_and_feeds_nosniff(
    client: TestClient, uncached_client: TestClient, engine: Engine, cache: str
) -> None:
    post = add_post(engine)
    reader_client = client if cache == "on" else uncached_client
    for path, status in [
        ("/", 200),
        (f"/read/{post.id}/{post.slug}", 200),  # a stored page (at the front door when served)
        ("/archive", 200),
        ("/tags/qqq", 200),
        ("/search?q=breadth", 200),
        ("/read/999/x", 404),
    ]:
        for _ in range(2):  # the second from the response cache
            response = reader_client.get(path, headers=HTML)
            assert response.status_code == status
            assert response.headers["content-security-policy"] == reader.CONTENT_SECURITY_POLICY
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "strict-origin-when-cross-origin"
    for path in ("/feed.xml", "/atom.xml", "/feed.json", "/sitemap.xml"):
        assert reader_client.get(path).headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in reader_client.get("/docs").headers  # its own scripts


def test_an_essay_id_written_with_leading_zeros_is_sent_to_the_canonical_page(
    client: TestClient, engine: Engine
) -> None:
    post = add_post(engine)
    canonical = f"/read/{post.id}/{post.slug}"
    for _ in range(2):
        response = client.get(f"/read/{post.id:04d}/{post.slug}", headers=HTML)
        assert (response.status_code, response.headers["location"]) == (301, canonical)


@pytest.mark.parametrize(
    "cursor", ["garbage", "", "a" * 500, "MjAyNi0wMS0wMXwx", "%00", "bm90fGFuaWQ"]
)
def test_bad_cursor_is_a_clear_400(client: TestClient, engine: Engine, cursor: str) -> None:
    add_post(engine)
    for path in ("/", "/tags/qqq", "/stories/narrow-leadership"):
        response = client.get(path, params={"before": cursor}, headers=HTML)
        assert response.status_code in (200, 400)
        response = client.get(path, params={"after": cursor}, headers=HTML)
        assert response.status_code in (200, 400)
    assert client.get("/", params={"before": "garbage"}, headers=HTML).status_code == 400


@pytest.mark.parametrize("slug", ["%00", "a%00b", "%ED%A0%80", "%C3%A9", "QQQ", "x" * 300])
@pytest.mark.parametrize("kind", ["tags", "stories"])
def test_hostile_tag_and_story_slugs_are_404(
    client: TestClient, engine: Engine, kind: str, slug: str
) -> None:
    add_post(engine)
    # NUL reached PostgreSQL, which refuses it in text: a 503 "database unavailable" page.
    page(client, f"/{kind}/{slug}", status=404)
    response = client.get(f"/{kind}/{slug}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "raw",
    [
        "0001-01-01T00:00:00+23:59|1",  # before year 1 in UTC: an OverflowError was a 500
        "9999-12-31T23:59:59-23:59|1",  # after year 9999 in UTC
        "2026-01-01T00:00:00+00:00|0",
        "2026-01-01T00:00:00+00:00|99999999999999",
    ],
)
def test_cursor_out_of_range_is_a_clear_400(client: TestClient, engine: Engine, raw: str) -> None:
    add_post(engine)
    for path in ("/", "/tags/qqq", "/stories/narrow-leadership"):
        for direction in ("before", "after"):
            response = client.get(path, params={direction: _cursor(raw)}, headers=HTML)
            assert response.status_code == 400, (path, direction, response.status_code)
            doc = lxml.html.fromstring(response.text)
            assert texts(doc, "//main//h1") == ["This page of the list doesn’t exist"]
            assert ("Start from the first page", path) in [
                (a.text_content(), a.get("href")) for a in doc.xpath("//main//a")
            ]
    response = client.get("/api/v1/posts", params={"cursor": _cursor(raw)})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "cursor"


# --- lists ---------------------------------------------------------------------------------------


def _walk(
    client: TestClient, start: str, titles_at: str = "//ol[@class='entries']//h2"
) -> tuple[list[str], list[lxml.html.HtmlElement]]:
    """Follow a list's rel=next links from `start`: every title seen, and each page."""
    titles: list[str] = []
    docs = []
    path: str | None = start
    while path:
        doc = page(client, path)
        docs.append(doc)
        titles += texts(doc, titles_at)
        nxt = hrefs(doc, "//nav[@class='pager']/a[@rel='next']")
        assert hrefs(doc, "//link[@rel='next']") == nxt
        path = nxt[0] if nxt else None
    return titles, docs


def test_home_paginates_by_key_both_ways(client: TestClient, engine: Engine, settings) -> None:  # type: ignore[no-untyped-def]
    made = many(engine, 45)
    newest_first = [
        p.title for p in sorted(made, key=lambda p: (p.published_at, p.id), reverse=True)
    ]
    titles, docs = _walk(client, "/")
    assert titles == newest_first and len(docs) == 3
    entry = docs[0].xpath("//li[@class='entry']")[0]
    meta = texts(entry, ".//p[@class='entry-meta']")[0]
    assert "Cycle" in meta and "Conviction 42%" in meta and entry.xpath(".//time/@datetime")
    assert texts(entry, ".//p[@class='excerpt']")[0].startswith("The minds argued")
    assert not docs[0].xpath("//link[@rel='prev']")
    # rel=prev from the last page walks back to the first
    back = hrefs(docs[2], "//link[@rel='prev']")[0]
    assert parse_qs(urlsplit(back).query).get("after")
    assert texts(page(client, back), "//ol[@class='entries']//h2") == newest_first[20:40]
    assert (
        hrefs(docs[1], "//link[@rel='prev']") == ["/"]
        or "after=" in hrefs(docs[1], "//link[@rel='prev']")[0]
    )
    # Each page is its own canonical page (a page 2 announced as page 1 reads as a copy of it).
    second = hrefs(docs[0], "//link[@rel='next']")[0]
    assert hrefs(docs[0], "//link[@rel='canonical']") == [f"{SITE_URL}/"]
    assert hrefs(docs[1], "//link[@rel='canonical']") == [f"{SITE_URL}{second}"]
    assert docs[1].xpath("//meta[@property='og:url']/@content") == [f"{SITE_URL}{second}"]
    assert hrefs(page(client, back), "//link[@rel='canonical']") == [f"{SITE_URL}{back}"]
    assert hrefs(page(client, "/?x=1"), "//link[@rel='canonical']") == [f"{SITE_URL}/"]


def test_tag_and_story_lists(client: TestClient, engine: Engine) -> None:
    made = many(engine, 25)
    add_post(engine, tags=["other"], stories=[])
    with db.write_session(engine) as session:
        posts.delete_post(session, made[0].id)  # type: ignore[arg-type]
    titles, _ = _walk(client, "/tags/qqq")
    expected = [
        p.title for p in sorted(made[1:], key=lambda p: (p.published_at, p.id), reverse=True)
    ]
    assert titles == expected
    doc = page(client, "/stories/long-story")
    assert texts(doc, "//main//h1") == ["Long Story"]
    statuses = texts(doc, "//ol[@class='timeline']/li//span[@class='status']")
    newest = max(made[1:], key=lambda p: (p.published_at, p.id))
    assert statuses[0] == f"step {made.index(newest)}"
    assert f"Status now: step {made.index(newest)}" in texts(doc, "//p[@class='lede']")[0]


def test_archive_by_month_in_site_time(client: TestClient, engine: Engine) -> None:
    # 2026-05-01T05:00Z is still April 30 in Los Angeles; 2026-03-01T08:30Z is March 1 (PST).
    add_post(engine, cycle=1, title="Late April", published_at="2026-05-01T05:00:00Z")
    add_post(engine, cycle=2, title="First of March", published_at="2026-03-01T08:30:00Z")
    add_post(engine, cycle=3, title="Last of February", published_at="2026-03-01T07:59:00Z")
    add_post(engine, cycle=4, title="New Year", published_at="2025-12-15T12:00:00Z")
    doc = page(client, "/archive")
    assert texts(doc, "//section[@class='year']/h2") == ["2026", "2025"]
    assert hrefs(doc, "//ul[@class='months']//a") == [
        "/archive/2026/04",
        "/archive/2026/03",
        "/archive/2026/02",
        "/archive/2025/12",
    ]
    assert texts(doc, "//p[@class='lede']") == ["4 essays, month by month."]
    april = page(client, "/archive/2026/04")
    assert texts(april, "//main//h1") == ["April 2026"]
    assert texts(april, "//ol[@class='compact']//a") == ["Late April"]
    assert texts(page(client, "/archive/2026/02"), "//ol[@class='compact']//a") == [
        "Last of February"
    ]
    assert texts(page(client, "/archive/2026/01"), "//ol[@class='compact']//a") == []


def test_archive_spanning_centuries_costs_a_few_queries(
    uncached_client: TestClient, engine: Engine
) -> None:
    # Essays at both ends of the allowed range: the archive used to count each of the ~96,000
    # months in between (320 statements of 300 counts each; over 30 s, every request).
    add_post(engine, cycle=1, title="Epoch", published_at="1970-01-01T00:00:00Z")
    add_post(engine, cycle=2, title="Today", published_at="2026-04-03T17:51:27Z")
    add_post(engine, cycle=3, title="Far Future", published_at="9998-12-31T23:59:59Z")
    statements: list[str] = []

    def listener(*args: object) -> None:
        statements.append(str(args[2]))

    app_engine = uncached_client.app.state.engine  # type: ignore[attr-defined]
    event.listen(app_engine, "before_cursor_execute", listener)
    try:
        doc = page(uncached_client, "/archive")
    finally:
        event.remove(app_engine, "before_cursor_execute", listener)
    # 1970-01-01T00:00Z is still December 1969 in Los Angeles.
    links = hrefs(doc, "//ul[@class='months']//a")
    assert links == ["/archive/9998/12", "/archive/2026/04", "/archive/1969/12"]
    assert len(statements) <= 10, statements
    for link, title in zip(links, ["Far Future", "Today", "Epoch"], strict=True):
        assert texts(page(uncached_client, link), "//ol[@class='compact']//a") == [title]


@pytest.mark.parametrize(
    "path",
    [
        "/archive/1969/11",
        "/archive/9999/02",
        "/archive/0000/01",
        "/archive/\uff12\uff10\uff12\uff16/\uff10\uff14",  # full-width digits: 2026/04
        "/archive/\u0662\u0660\u0662\u0666/04",  # Arabic-Indic digits
    ],
)
def test_archive_months_no_essay_can_be_in_are_404(client: TestClient, path: str) -> None:
    page(client, path, status=404)


# --- HTTP ----------------------------------------------------------------------------------------


def test_if_none_match_star_does_not_hide_a_missing_page(
    client: TestClient, engine: Engine
) -> None:
    post, gone = one_published_one_withdrawn(engine)
    star = {"If-None-Match": "*", **HTML}
    # "*" matched any path: unknown, withdrawn and moved pages all answered 304.
    for path, status in [
        ("/tags/nope", 404),
        ("/read/999999/x", 404),
        (f"/read/{gone.id}/{gone.slug}", 410),
        (f"/read/{post.id}/old-slug", 301),
        ("/archive/2026/13", 404),
    ]:
        for _ in range(2):  # the second may come from the response cache
            assert client.get(path, headers=star).status_code == status, path
    for path in (f"/read/{post.id}/{post.slug}", "/tags/qqq", "/"):
        client.get(path, headers=HTML)
        assert client.get(path, headers=star).status_code == 304, path


@pytest.mark.parametrize("path", ["/", "/archive", "/search?q=breadth", "/tags/qqq", "ESSAY"])
def test_etag_304_and_cache_control(client: TestClient, engine: Engine, path: str) -> None:
    post = add_post(engine)
    if path == "ESSAY":
        path = f"/read/{post.id}/{post.slug}"
    first = client.get(path)
    etag = first.headers["etag"]
    assert first.status_code == 200
    cache = first.headers["cache-control"]
    assert "public" in cache and "s-maxage=" in cache and "stale-while-revalidate=" in cache
    again = client.get(path, headers={"if-none-match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert client.get(path + ("&" if "?" in path else "?") + "x=1").headers["etag"] != etag
    add_post(engine, cycle=901, title="Another", published_at="2026-04-06T00:00:00Z")
    changed = client.get(path, headers={"if-none-match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag


def test_gzip_and_static_cache_busting(client: TestClient, engine: Engine) -> None:
    add_post(engine)
    response = client.get("/", headers={"accept-encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert "<html" in response.text  # httpx decoded it
    assert (
        "content-encoding" not in client.get("/", headers={"accept-encoding": "identity"}).headers
    )
    href = page(client, "/").xpath("//link[@rel='stylesheet']/@href")[0]
    assert "?v=" in href
    assert client.get(href).headers["cache-control"] == "public, max-age=31536000, immutable"
    plain = client.get(href.split("?")[0]).headers["cache-control"]
    assert "immutable" not in plain
    assert "immutable" not in client.get(href.split("?")[0] + "?v=stale").headers["cache-control"]


def _tokens(value: str | None) -> list[str]:
    """A list-valued header (Vary, If-None-Match) as its items."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def _validators(answer) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """What a 304 must repeat from its 200 (RFC 9110 section 15.4.5)."""
    return {
        "etag": answer.headers.get("etag"),
        "cache-control": answer.headers.get("cache-control"),
        "vary": sorted(_tokens(answer.headers.get("vary"))),
    }


def test_a_gzipped_static_file_has_its_own_etag(client: TestClient) -> None:
    """The gzip middleware compresses static files on the way out: the compressed file is
    another representation and must not share the plain file's strong ETag (RFC 9110 section
    8.8.3; nginx weakens it). Either ETag still answers 304, whichever encoding is asked for
    (If-None-Match compares weakly), and a range of the file, never compressed, keeps the
    strong one."""
    path = "/static/style.css"
    plain = client.get(path, headers={"Accept-Encoding": "identity"})
    zipped = client.get(path, headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in plain.headers
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.content == plain.content  # decoded: the same file
    strong, weak = plain.headers["etag"], zipped.headers["etag"]
    assert re.fullmatch(r'"[^"]+"', strong) and re.fullmatch(r'W/"[^"]+"', weak)
    assert weak != strong and weak.removeprefix("W/") == strong
    for encoding, answer in (("identity", plain), ("gzip", zipped)):
        for held in (strong, weak, f'"other", {weak}', "*"):
            asked = {"Accept-Encoding": encoding, "If-None-Match": held}
            again = client.get(path, headers=asked)
            assert (again.status_code, again.content) == (304, b""), asked
            assert _validators(again) == _validators(answer), asked
        changed = client.get(path, headers={"Accept-Encoding": encoding, "If-None-Match": '"x"'})
        assert changed.status_code == 200
    ranged = client.get(path, headers={"Accept-Encoding": "gzip", "Range": "bytes=0-99"})
    assert ranged.status_code == 206 and "content-encoding" not in ranged.headers
    assert ranged.headers["etag"] == strong and ranged.content == plain.content[:100]
    # A weak tag never names the range's version (If-Range compares strongly): the whole file.
    whole = client.get(
        path, headers={"Accept-Encoding": "gzip", "Range": "bytes=0-99", "If-Range": weak}
    )
    assert whole.status_code == 200 and whole.headers["etag"] == weak
    assert whole.headers["content-encoding"] == "gzip"


def test_a_static_files_304_carries_the_vary_of_its_200(client: TestClient) -> None:
    """A 304 carries the Vary its 200 would (RFC 9110 section 15.4.5): the gzip middleware
    names Vary only on a body it could compress, and a 304 has none, so a cache could have
    kept the 304 as the answer for every encoding."""
    path = "/static/style.css"
    for encoding in ("gzip", "identity"):
        full = client.get(path, headers={"Accept-Encoding": encoding})
        assert "Accept-Encoding" in _tokens(full.headers.get("vary"))
        asked = {"Accept-Encoding": encoding, "If-None-Match": full.headers["etag"]}
        for method in ("GET", "HEAD"):
            spared = client.request(method, path, headers=asked)
            assert spared.status_code == 304
            assert _tokens(spared.headers.get("vary")) == ["Accept-Encoding"], (method, encoding)


@pytest.mark.parametrize(
    "path",
    ["/", "ESSAY", "/tags/qqq", "/feed.xml", "/feed.json", "/sitemap.xml", "/api/v1/posts", "API"],
)
def test_a_routes_304_carries_the_vary_of_its_200(
    uncached_client: TestClient, engine: Engine, path: str
) -> None:
    """What the routes answer themselves (the response cache off, or passed by a request with
    a token): their 304 names Accept-Encoding in Vary, as their 200 does (RFC 9110 section
    15.4.5). It had none, the gzip layer adding Vary only to a body."""
    post = add_post(engine)
    as_if_written_a_minute_ago(engine)
    path = {"ESSAY": f"/read/{post.id}/{post.slug}", "API": f"/api/v1/posts/{post.id}"}.get(
        path, path
    )
    for encoding in ("gzip", "identity"):
        full = uncached_client.get(path, headers={"Accept-Encoding": encoding})
        assert full.status_code == 200 and "Accept-Encoding" in _tokens(full.headers.get("vary"))
        asked = {"Accept-Encoding": encoding, "If-None-Match": full.headers["etag"]}
        spared = uncached_client.get(path, headers=asked)
        assert spared.status_code == 304, (path, encoding)
        assert _validators(spared) == _validators(full), (path, encoding)


def test_a_busy_month_pages_by_key_in_time_order(
    client: TestClient, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine writing every hour fills a month with 700 essays: its archive page shows them
    a page at a time, oldest first, with links both ways (in the body and the head)."""
    monkeypatch.setattr(browse, "MONTH_PAGE_SIZE", 3)
    made = [
        add_post(engine, cycle=n, title=f"March {n}", published_at=f"2026-03-{n:02d}T18:00:00Z")
        for n in range(1, 9)
    ]
    add_post(engine, cycle=99, title="April", published_at="2026-04-02T18:00:00Z")
    titles, docs = _walk(client, "/archive/2026/03", "//ol[@class='compact']//a")
    assert titles == [p.title for p in made] and len(docs) == 3
    assert not hrefs(docs[0], "//nav[@class='pager']/a[@rel='prev']")
    earlier = hrefs(docs[2], "//nav[@class='pager']/a[@rel='prev']")
    assert hrefs(docs[2], "//link[@rel='prev']") == earlier
    back = page(client, earlier[0])
    assert texts(back, "//ol[@class='compact']//a") == ["March 4", "March 5", "March 6"]
    assert page(client, "/archive/2026/03?before=not-a-cursor", status=400) is not None
