"""HEAD answers wherever GET does (RFC 9110 section 9.3.2): the same status and headers, no body.

Every GET route of the app is listed in EXAMPLES with the requests that exercise it (found,
missing, withdrawn, refused) and the status each answers, so a new GET route fails
`test_every_get_route_has_examples` until it is listed here, and then
`test_head_answers_like_get` checks it, in the app and through `workshop serve`, with and
without gzip.
"""

import os
from pathlib import Path

import httpx
import pytest
from conftest import (
    as_if_written_a_minute_ago,
    one_published_one_withdrawn,
    start_server,
    stop_server,
)
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from starlette.middleware.gzip import GZipMiddleware
from starlette.routing import Mount
from starlette.types import Message, Receive, Scope, Send

from app.config import Settings
from app.main import GZIP
from app.templating import StaticAssets

# `{post}`, `{slug}`: a published essay; `{gone}`, `{gone_slug}`: a withdrawn one. Each example
# with the status its GET answers: HEAD and GET alike is no proof when both are a 500.
EXAMPLES: dict[str, dict[str, int]] = {
    "/": {"/": 200, "/?before=not-a-cursor": 400},
    "/archive": {"/archive": 200},
    "/archive/{year}/{month}": {"/archive/2026/04": 200, "/archive/2026/13": 404},
    "/tags/{tag_slug}": {"/tags/qqq": 200, "/tags/nope": 404},
    "/stories/{story_slug}": {"/stories/narrow-leadership": 200, "/stories/nope": 404},
    "/search": {"/search?q=breadth": 200, "/search": 200},
    "/read/{post_id}": {"/read/{post}": 301, "/read/999999": 404, "/read/abc": 404},
    "/read/{post_id}/": {"/read/{post}/": 301},
    "/read/{post_id}/{slug}": {
        "/read/{post}/{slug}": 200,
        "/read/{post}/old-slug": 301,
        "/read/{gone}/{gone_slug}": 410,
        "/read/999999/x": 404,
    },
    "/cycle/{cycle}": {"/cycle/900": 302, "/cycle/901": 410, "/cycle/5": 404, "/cycle/x": 404},
    "/api/v1/posts": {
        "/api/v1/posts": 200,
        "/api/v1/posts?limit=1": 200,
        "/api/v1/posts?limit=0": 422,
    },
    "/api/v1/posts/{post_id}": {
        "/api/v1/posts/{post}": 200,
        "/api/v1/posts/{gone}": 410,
        "/api/v1/posts/999999": 404,
        "/api/v1/posts/abc": 422,
    },
    "/feed.xml": {"/feed.xml": 200},
    "/atom.xml": {"/atom.xml": 200},
    "/feed.json": {"/feed.json": 200},
    "/tags/{slug}/feed.xml": {"/tags/qqq/feed.xml": 200, "/tags/nope/feed.xml": 404},
    "/tags/{slug}/atom.xml": {"/tags/qqq/atom.xml": 200},
    "/tags/{slug}/feed.json": {"/tags/qqq/feed.json": 200},
    "/stories/{slug}/feed.xml": {"/stories/narrow-leadership/feed.xml": 200},
    "/stories/{slug}/atom.xml": {"/stories/narrow-leadership/atom.xml": 200},
    "/stories/{slug}/feed.json": {
        "/stories/narrow-leadership/feed.json": 200,
        "/stories/x/feed.json": 404,
    },
    "/sitemap.xml": {"/sitemap.xml": 200},
    "/sitemaps/{name}": {"/sitemaps/posts-0.xml": 200, "/sitemaps/nope.xml": 404},
    "/robots.txt": {"/robots.txt": 200},
    "/healthz": {"/healthz": 200},
    "/readyz": {"/readyz": 200},
    "/metrics": {"/metrics": 200},
    "/openapi.json": {"/openapi.json": 200},
    "/docs": {"/docs": 200},
    "/docs/oauth2-redirect": {"/docs/oauth2-redirect": 200},
    "/redoc": {"/redoc": 200},
    "/static": {"/static/style.css": 200, "/static/nope.css": 404},
}
# Headers that differ from one request to the next, whatever the method.
PER_REQUEST = {"date", "x-request-id"}
ACCEPTS = ("text/html", "application/json", "*/*")
# Compressed (Starlette's gzip middleware, stored essay pages) or not, every answer above 500
# bytes: a HEAD must name the GET's encoding, length and Vary either way.
ENCODINGS = ("gzip", "identity")


def _essays(engine: Engine) -> dict[str, object]:
    post, gone = one_published_one_withdrawn(engine)
    as_if_written_a_minute_ago(engine)  # feeds send Last-Modified to both requests alike
    return {"post": post.id, "slug": post.slug, "gone": gone.id, "gone_slug": gone.slug}


def _examples(values: dict[str, object]) -> list[tuple[str, int]]:
    """Every example's path, with the status its GET answers."""
    return [
        (example.format(**values), status)
        for route in sorted(EXAMPLES)
        for example, status in EXAMPLES[route].items()
    ]


def _shown(response: httpx.Response, path: str) -> list[tuple[str, str]]:
    """The headers a HEAD must repeat from its GET (RFC 9110 section 9.3.2), every value of
    each: all but those made per request, and the message framing. Transfer-Encoding is how
    one message's bytes are sent (a streamed sitemap's GET goes chunked), which a HEAD, with
    no content, need not name (RFC 9112 section 6.1); Content-Length is compared."""
    skipped = PER_REQUEST | {"transfer-encoding"}
    if path == "/metrics":  # the counts move between the two requests, and so the length
        skipped |= {"content-length"}
    return sorted((k, v) for k, v in response.headers.multi_items() if k not in skipped)


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
    # cache was off or stepped aside (a request carrying a token or a cookie). A static file's
    # HEAD named the file's own length, and no Content-Encoding or Vary, where its GET sent it
    # gzipped: Starlette's FileResponse sends no body for HEAD, so the gzip middleware had
    # nothing to compress.
    values = _essays(engine)
    for example, status in EXAMPLES[route].items():
        path = example.format(**values)
        for accept in ACCEPTS:
            for encoding in ENCODINGS:
                asked = {"Accept": accept, "Accept-Encoding": encoding}
                got = uncached_client.get(path, headers=asked)
                head = uncached_client.head(path, headers=asked)
                assert got.status_code == status, (path, asked)  # not merely alike in failing
                assert (head.status_code, head.content) == (status, b""), (path, asked)
                assert _shown(head, path) == _shown(got, path), (path, asked)


@pytest.mark.parametrize("response_cache", ["true", "false"])
def test_head_answers_like_get_through_the_server(
    engine: Engine, settings: Settings, token: str, tmp_path: Path, response_cache: str
) -> None:
    """`workshop serve` answers HEAD with GET's headers wherever the answer comes from: its
    front door (stored essay pages, response-cache hits), the cache filling itself from the
    GET a HEAD stands for, or the app through ASGI (static files, operator endpoints, a
    request with the engine's token, everything when the cache is off). Never a body."""
    values = _essays(engine)
    bearer = {"Authorization": f"Bearer {token}"}
    examples = _examples(values)
    personal = [(path, status, bearer) for path, status in examples if path.startswith("/api/")]
    requests = [(path, status, {}) for path, status in examples] + personal
    server = start_server(settings, tmp_path, WORKSHOP_RESPONSE_CACHE=response_cache)
    try:
        with httpx.Client(base_url=server.url) as client:
            for path, status, headers in requests:
                for accept in ACCEPTS:
                    for encoding in ENCODINGS:
                        asked = {**headers, "Accept": accept, "Accept-Encoding": encoding}
                        first = client.head(path, headers=asked)  # a cache miss, if cached
                        got = client.get(path, headers=asked)
                        head = client.head(path, headers=asked)  # as the GET was answered
                        assert got.status_code == status, (path, asked)
                        for answer in (first, head):
                            assert answer.status_code == status, (path, asked)
                            assert answer.content == b"", (path, asked)
                        assert _shown(head, path) == _shown(got, path), (path, asked)
                        # The first HEAD was a miss where the GET was a hit: all else alike.
                        missed = [(k, v) for k, v in _shown(first, path) if k != "x-cache"]
                        assert missed == [(k, v) for k, v in _shown(got, path) if k != "x-cache"]
    finally:
        stop_server(server)


def _stylesheet(size: int, seed: int) -> bytes:
    """`size` bytes of CSS that compress as a real stylesheet does, other bytes per seed."""
    rules = (f".c{i} {{ margin: {(i * seed) % 17}px {i % 5}em; }}\n" for i in range(size))
    return "".join(rules).encode()[:size]


@pytest.mark.parametrize("size", [100, 13_000, 70_000])  # too short to gzip, one chunk, streamed
def test_a_static_files_head_gives_the_gzip_layer_nothing_to_compress(
    tmp_path: Path, size: int
) -> None:
    """A static file's HEAD names the headers of its GET through the gzip middleware without
    handing it the file: it was answered as GET, so every HEAD had the file compressed for
    the server to drop. Its gzipped length follows the file's version (time and size)."""
    directory = tmp_path / "static"
    directory.mkdir()
    sheet = directory / "notes.css"
    handed: list[bytes] = []  # the body StaticAssets hands the gzip middleware, per answer

    async def static_files(scope: Scope, receive: Receive, send: Send) -> None:
        async def passing(message: Message) -> None:
            if message["type"] == "http.response.body":
                handed[-1] += message.get("body", b"")
            await send(message)

        handed.append(b"")
        await assets(scope, receive, passing)

    assets = StaticAssets(directory=str(directory), compress_from=GZIP["minimum_size"])
    client = TestClient(GZipMiddleware(static_files, **GZIP))  # no lifespan: files alone
    for seed, when in ((3, 1_700_000_000), (5, 1_700_000_100)):  # the file, then changed
        sheet.write_bytes(_stylesheet(size, seed))
        os.utime(sheet, (when, when))
        for encoding in ENCODINGS:
            asked = {"Accept-Encoding": encoding}
            got = client.get("/notes.css", headers=asked)
            head = client.head("/notes.css", headers=asked)
            assert (got.status_code, head.status_code) == (200, 200)
            assert _shown(head, "/notes.css") == _shown(got, "/notes.css"), (size, asked)
            assert handed[-1] == b"", (size, asked)
            assert handed[-2] == sheet.read_bytes()
            compressed = encoding == "gzip" and size >= GZIP["minimum_size"]
            assert got.headers.get("content-encoding") == ("gzip" if compressed else None)
