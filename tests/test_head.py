"""HEAD answers wherever GET does (RFC 9110 section 9.3.2): the same status and headers, no body.

Every GET route of the app is listed in EXAMPLES with the requests that exercise it (found,
missing, withdrawn, refused), so a new GET route fails `test_every_get_route_has_examples`
until it is listed here, and then `test_head_answers_like_get` checks it.
"""

import httpx
import pytest
from conftest import LiveServer, one_published_one_withdrawn
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from starlette.routing import Mount

# `{post}`, `{slug}`: a published essay; `{gone}`, `{gone_slug}`: a withdrawn one.
EXAMPLES: dict[str, list[str]] = {
    "/": ["/", "/?before=not-a-cursor"],
    "/archive": ["/archive"],
    "/archive/{year}/{month}": ["/archive/2026/04", "/archive/2026/13"],
    "/tags/{tag_slug}": ["/tags/qqq", "/tags/nope"],
    "/stories/{story_slug}": ["/stories/narrow-leadership", "/stories/nope"],
    "/search": ["/search?q=breadth", "/search"],
    "/read/{post_id}": ["/read/{post}", "/read/999999", "/read/abc"],
    "/read/{post_id}/": ["/read/{post}/"],
    "/read/{post_id}/{slug}": [
        "/read/{post}/{slug}",
        "/read/{post}/old-slug",
        "/read/{gone}/{gone_slug}",
        "/read/999999/x",
    ],
    "/cycle/{cycle}": ["/cycle/900", "/cycle/901", "/cycle/5", "/cycle/x"],
    "/api/v1/posts": ["/api/v1/posts", "/api/v1/posts?limit=1", "/api/v1/posts?limit=0"],
    "/api/v1/posts/{post_id}": [
        "/api/v1/posts/{post}",
        "/api/v1/posts/{gone}",
        "/api/v1/posts/999999",
        "/api/v1/posts/abc",
    ],
    "/feed.xml": ["/feed.xml"],
    "/atom.xml": ["/atom.xml"],
    "/feed.json": ["/feed.json"],
    "/tags/{slug}/feed.xml": ["/tags/qqq/feed.xml", "/tags/nope/feed.xml"],
    "/tags/{slug}/atom.xml": ["/tags/qqq/atom.xml"],
    "/tags/{slug}/feed.json": ["/tags/qqq/feed.json"],
    "/stories/{slug}/feed.xml": ["/stories/narrow-leadership/feed.xml"],
    "/stories/{slug}/atom.xml": ["/stories/narrow-leadership/atom.xml"],
    "/stories/{slug}/feed.json": ["/stories/narrow-leadership/feed.json", "/stories/x/feed.json"],
    "/sitemap.xml": ["/sitemap.xml"],
    "/sitemaps/{name}": ["/sitemaps/posts-0.xml", "/sitemaps/nope.xml"],
    "/robots.txt": ["/robots.txt"],
    "/healthz": ["/healthz"],
    "/readyz": ["/readyz"],
    "/metrics": ["/metrics"],
    "/openapi.json": ["/openapi.json"],
    "/docs": ["/docs"],
    "/docs/oauth2-redirect": ["/docs/oauth2-redirect"],
    "/redoc": ["/redoc"],
    "/static": ["/static/style.css", "/static/nope.css"],
}
# Headers that differ from one request to the next, whatever the method.
PER_REQUEST = {"date", "x-request-id"}
ACCEPTS = ("text/html", "application/json", "*/*")


def _essays(engine: Engine) -> dict[str, object]:
    post, gone = one_published_one_withdrawn(engine)
    return {"post": post.id, "slug": post.slug, "gone": gone.id, "gone_slug": gone.slug}


def test_every_get_route_has_examples(app) -> None:  # type: ignore[no-untyped-def]
    answered = set()
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, Mount):
            answered.add(route.path)  # static files: StaticFiles answers GET and HEAD itself
        elif "GET" in (route.methods or ()):
            answered.add(route.path)
    assert answered == set(EXAMPLES)


@pytest.mark.parametrize("route", sorted(EXAMPLES))
def test_head_answers_like_get(uncached_client: TestClient, engine: Engine, route: str) -> None:
    # The response cache answers a HEAD from the GET it stores, which hid that FastAPI's
    # routes answer only the methods they name: HEAD of /api/v1/posts was 405 whenever the
    # cache was off or stepped aside (a request carrying a token or a cookie).
    values = _essays(engine)
    for example in EXAMPLES[route]:
        path = example.format(**values)
        for accept in ACCEPTS:
            got = uncached_client.get(path, headers={"Accept": accept})
            head = uncached_client.head(path, headers={"Accept": accept})
            assert (head.status_code, head.content) == (got.status_code, b""), (path, accept)
            names = set(got.headers) - PER_REQUEST
            if path.startswith("/static/"):
                # A file's HEAD sends no body for the gzip middleware to compress: it names the
                # file's own length and no Content-Encoding (Starlette's FileResponse).
                names -= {"content-length", "content-encoding", "vary"}
            else:
                assert set(head.headers) - PER_REQUEST == names, (path, accept)
            if path == "/metrics":  # the counts move between the two requests
                names.discard("content-length")
            for name in names:
                assert head.headers[name] == got.headers[name], (path, accept, name)


def test_head_through_the_server(engine: Engine, token: str, live_server: LiveServer) -> None:
    """`workshop serve` answers HEAD through its front door (cache hits, stored pages) and
    through ASGI (everything else, here the API with the engine's token): never a body."""
    values = _essays(engine)
    bearer = {"Authorization": f"Bearer {token}"}
    for example, headers in [
        ("/api/v1/posts", bearer),
        ("/api/v1/posts/{post}", bearer),
        ("/api/v1/posts/{gone}", bearer),
        ("/api/v1/posts", {}),
        ("/read/{post}/{slug}", {}),
        ("/", {}),
    ]:
        url = live_server.url + example.format(**values)
        for _ in range(2):  # the second from the response cache, where one may answer
            got = httpx.get(url, headers=headers)
            head = httpx.head(url, headers=headers)
            assert (head.status_code, head.content) == (got.status_code, b""), url
            assert head.headers["content-length"] == got.headers["content-length"], url
            assert head.headers.get("etag") == got.headers.get("etag"), url
