"""The essay page's stored HTML (posts.page_html): written with the post, identical to a live
render, replaced on every edit, and ignored when another build or site rendered it."""

import lxml.html
from conftest import SITE_URL, add_post, post_json
from sqlalchemy import Engine, text

from app.fragments import SITE_URL as PLACEHOLDER

API = "/api/v1/posts"


def _stored(engine: Engine, post_id: int) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT page_html FROM posts WHERE id = :id"), {"id": post_id}
        ).scalar()


def _set_stored(engine: Engine, post_id: int, value: str | None) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE posts SET page_html = :v WHERE id = :id"), {"v": value, "id": post_id}
        )


def test_the_api_stores_the_page_html_and_the_page_matches_a_live_render(
    uncached_client, engine, auth
) -> None:
    neighbour = add_post(engine, cycle=1, title="Older Essay", published_at="2026-04-01T10:00:00Z")
    created = uncached_client.post(API, json=post_json(), headers=auth).json()
    stored = _stored(engine, created["id"])
    assert stored is not None and stored.startswith("<!--fragment:")
    assert PLACEHOLDER in stored  # the site URL is filled in per request
    path = f"/read/{created['id']}/{created['slug']}"
    from_stored = uncached_client.get(path)
    assert from_stored.status_code == 200
    assert PLACEHOLDER not in from_stored.text and SITE_URL + path in from_stored.text
    assert f"/read/{neighbour.id}/{neighbour.slug}" in from_stored.text  # rel=prev

    _set_stored(engine, created["id"], None)  # what a post written without a renderer has
    live = uncached_client.get(path)
    assert live.status_code == 200 and live.text == from_stored.text


def test_an_edit_replaces_the_stored_html(uncached_client, engine, auth) -> None:
    created = uncached_client.post(API, json=post_json(), headers=auth)
    post_id = created.json()["id"]
    replaced = uncached_client.put(
        f"{API}/{post_id}",
        json=post_json(title="Breadth Snaps Back", body="A *new* body."),
        headers={**auth, "If-Match": created.headers["etag"]},
    )
    assert replaced.status_code == 200
    assert "Breadth Snaps Back" in (_stored(engine, post_id) or "")
    page = uncached_client.get(f"/read/{post_id}/breadth-snaps-back")
    assert page.status_code == 200
    assert "<em>new</em>" in page.text and "Flow saw outflows" not in page.text


def test_html_from_another_build_is_not_served(uncached_client, engine, auth) -> None:
    created = uncached_client.post(API, json=post_json(), headers=auth).json()
    _set_stored(engine, created["id"], "<!--fragment:0000000000000000-->STALE<!--workshop:head-->")
    page = uncached_client.get(f"/read/{created['id']}/{created['slug']}")
    assert page.status_code == 200
    assert "STALE" not in page.text and "Flow saw outflows" in page.text


def test_absent_minds_come_from_the_neighbours(uncached_client, engine) -> None:
    add_post(
        engine,
        cycle=1,
        title="Before",
        published_at="2026-04-01T10:00:00Z",
        debate={"outcome": "bull", "minds": [{"name": "Volatility", "confidence": 0.5}]},
    )
    post = add_post(engine, cycle=2, title="Middle", published_at="2026-04-02T10:00:00Z")
    page = uncached_client.get(f"/read/{post.id}/{post.slug}")
    assert page.status_code == 200
    assert 'class="mind absent"><span class="mind-name">Volatility' in page.text
    for name in ("Macro", "Flow", "Contrarian"):
        assert f'<span class="mind-name">{name}</span>' in page.text


# An essay's body as the Markdown renderer stored it before essay pages moved its headings
# below the title and named its footnote links: a `#` heading is an h1, a back-link is "↩︎".
BODY_HTML_STORED_BEFORE = (
    "<h1>What the minds argued</h1>\n"
    '<p>Flow saw outflows.<sup class="footnote-ref"><a href="#fn1" id="fnref1">[1]</a></sup></p>\n'
    '<hr class="footnotes-sep" />\n<section class="footnotes">\n<ol class="footnotes-list">\n'
    '<li id="fn1" class="footnote-item"><p>Five days running. '
    '<a href="#fnref1" class="footnote-backref">\u21a9\ufe0e</a></p>\n</li>\n</ol>\n</section>\n'
)


def test_essays_stored_before_a_deploy_get_its_page_fixes(uncached_client, engine) -> None:
    """The page adjusts the stored body HTML when it renders (`templating.prose`), so an essay
    written before gets a deploy's fixes without rendering its Markdown again: its stored
    fragment comes from another build and is made again from the same stored body."""
    post = add_post(engine)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE posts SET body_html = :html WHERE id = :id"),
            {"html": BODY_HTML_STORED_BEFORE, "id": post.id},
        )
    _set_stored(engine, post.id, "<!--fragment:0000000000000000-->STALE<!--workshop:head-->")
    page = uncached_client.get(f"/read/{post.id}/{post.slug}")
    assert page.status_code == 200
    doc = lxml.html.fromstring(page.text)
    assert [h.text_content() for h in doc.xpath("//h1")] == [post.title]
    prose = doc.xpath("//div[contains(@class,'prose')]")[0]
    assert [h.text_content() for h in prose.xpath(".//h2")] == ["What the minds argued", "Notes"]
    assert prose.xpath(".//sup[@class='footnote-ref']/a/@aria-label") == ["Footnote 1"]
    assert prose.xpath(".//a[@class='footnote-backref']/@aria-label") == ["Back to reference 1"]
