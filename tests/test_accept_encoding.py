"""Whether a client accepts gzip is one decision (app/routes/conditional.py), taken alike by the
gzip layer, the response cache's key, the stored essay pages and the API's posts: weights
count (RFC 9110 section 12.5.3), so `gzip;q=0` gets the plain answer from every one of them,
and a cache entry made for a gzip client is never handed to a client that refused gzip."""

import gzip
import json
from collections.abc import Iterator
from importlib.resources import files

import feedparser
import httpx
import pytest
from conftest import SITE_URL, LiveServer, sample_input, start_server, stop_server
from fastapi.testclient import TestClient
from lxml import html
from sqlalchemy import Engine

from app import posts
from app.config import Settings
from app.db import write_session
from app.fragments import Renderer
from app.routes.conditional import gzip_acceptable
from app.urls import post_path

Fields = list[tuple[str, str]]  # request header lines, repeats kept


@pytest.mark.parametrize(
    ("value", "acceptable"),
    [
        ("gzip", True),
        ("GZIP", True),
        ("gzip, deflate, br, zstd", True),
        ("x-gzip", True),  # RFC 9110 section 8.4.1.3
        ("gzip;q=0.5", True),
        ("gzip;q=1", True),
        ("gzip ; Q=0.001", True),
        ("gzip;q=0", False),
        ("gzip; q=0.0", False),
        ("gzip;q=0.000", False),
        ("GZIP;Q=0", False),
        ("deflate, gzip;q=0", False),
        ("gzip;q=0, *", False),  # named: the wildcard does not count
        ("gzip, gzip;q=0", False),  # said both ways: the plain answer is the safe one
        ("*", True),
        ("br, *;q=0.1", True),
        ("*;q=0", False),
        ("*;q=0, gzip", True),
        ("br", False),
        ("identity", False),
        ("identity;q=0", False),  # refuses identity but names nothing else
        ("", False),
        # Malformed weights refuse their entry, and never raise.
        ("gzip;q=abc", False),
        ("gzip;q=", False),
        ("gzip;q=1.5", False),
        ("gzip;q=0.0001", False),
        ("gzip;q=-1", False),
        ("gzip;q=abc, *", False),
        ("gzip;q=\xff\x00", False),
        (";;;,,,", False),
    ],
)
def test_gzip_acceptable(value: str, acceptable: bool) -> None:
    assert gzip_acceptable(value.encode("latin-1")) is acceptable


# --- every representation, through ASGI and over a real server -------------------------------

REFUSED: list[Fields] = [
    [("Accept-Encoding", "gzip;q=0")],
    [("Accept-Encoding", "gzip; q=0.0")],
    [("Accept-Encoding", "deflate, gzip;q=0")],
    [("Accept-Encoding", "*;q=0")],
    [("Accept-Encoding", "gzip;q=abc")],
    [("Accept-Encoding", "gzip"), ("Accept-Encoding", "gzip;q=0")],  # one list (RFC 9110 5.3)
]
ACCEPTED: list[Fields] = [
    [("Accept-Encoding", "gzip")],
    [("Accept-Encoding", "GZIP")],
    [("Accept-Encoding", "gzip;q=0.5")],
    [("Accept-Encoding", "*")],
    [("Accept-Encoding", "deflate"), ("Accept-Encoding", "gzip")],
]
GZIP: Fields = [("Accept-Encoding", "gzip")]
REFUSING: Fields = [("Accept-Encoding", "gzip;q=0")]
PLAIN: Fields = [("Accept-Encoding", "identity")]


def _essay(engine: Engine, settings: Settings) -> posts.Post:
    """A published essay whose page is stored, so the stored pages' front door answers it."""
    with write_session(engine) as session:
        made = posts.create_post(
            session, sample_input(), "Workshop", render=Renderer.for_settings(settings)
        )
        session.expunge(made.post)
        return made.post


def _surfaces(essay: posts.Post) -> dict[str, str]:
    return {
        "essay": post_path(essay),
        "feed": "/feed.xml",
        "static": "/static/style.css",
        "api": f"/api/v1/posts/{essay.id}",
    }


def _get(http: httpx.Client, path: str, fields: Fields) -> tuple[httpx.Response, bytes]:
    """GET keeping the body as sent (httpx would decode a gzip)."""
    with http.stream("GET", path, headers=fields) as answer:
        return answer, b"".join(answer.iter_raw())


def _check_content(surface: str, body: bytes, essay: posts.Post) -> None:
    """The body, parsed, is the surface's document about `essay`."""
    if surface == "essay":
        assert html.fromstring(body).xpath("string(//h1)") == essay.title
    elif surface == "feed":
        feed = feedparser.parse(body)
        assert not feed.bozo and feed.entries[0].title == essay.title
    elif surface == "static":
        assert body == (files("app.static") / "style.css").read_bytes()
    else:
        assert json.loads(body)["id"] == essay.id


def _check_every_surface(
    http: httpx.Client, essay: posts.Post, fields: Fields, gzipped: bool
) -> None:
    """Every surface answers in the representation `gzipped` names, twice: the second time the
    response cache (where it keeps the surface) answers from memory."""
    for surface, path in _surfaces(essay).items():
        for _ in range(2):
            answer, body = _get(http, path, fields)
            asked = (surface, fields)
            assert answer.status_code == 200, asked
            if gzipped:
                assert answer.headers.get("content-encoding") == "gzip", asked
                body = gzip.decompress(body)
            else:
                assert "content-encoding" not in answer.headers, asked
            _check_content(surface, body, essay)
            assert "accept-encoding" in answer.headers["vary"].lower(), asked
            if surface == "essay":  # the stored page, not a live render
                assert answer.headers["etag"].startswith('W/"p'), asked
            if surface == "api":
                tag = f'"p{essay.id}v1-gzip"' if gzipped else f'"p{essay.id}v1"'
                assert answer.headers["etag"] == tag, asked


def _check_cache_keeps_them_apart(http: httpx.Client, essay: posts.Post) -> None:
    """A gzip client fills the response cache; a client refusing gzip then gets the plain
    answer (its own entry, shared with `identity`), and the gzip client its gzip again."""
    for path in ("/", "/feed.xml", f"/api/v1/posts/{essay.id}"):
        asked: list[tuple[Fields, str, str | None]] = [
            (GZIP, "miss", "gzip"),
            (GZIP, "hit", "gzip"),
            (REFUSING, "miss", None),
            (PLAIN, "hit", None),
            (REFUSING, "hit", None),
            (GZIP, "hit", "gzip"),
        ]
        for fields, cache, encoding in asked:
            answer, body = _get(http, path, fields)
            assert answer.status_code == 200, (path, fields)
            assert answer.headers.get("content-encoding") == encoding, (path, fields)
            assert answer.headers["x-cache"] == cache, (path, fields)
            if encoding is None:
                if path == "/":
                    assert html.fromstring(body).xpath("string(//title)")
                else:
                    _check_content("feed" if path == "/feed.xml" else "api", body, essay)


@pytest.fixture
def essay(engine: Engine, settings: Settings) -> posts.Post:
    return _essay(engine, settings)


@pytest.mark.parametrize("fields", REFUSED, ids=repr)
def test_a_client_refusing_gzip_gets_every_answer_plain(
    client: TestClient, essay: posts.Post, fields: Fields
) -> None:
    _check_every_surface(client, essay, fields, gzipped=False)


@pytest.mark.parametrize("fields", ACCEPTED, ids=repr)
def test_a_client_accepting_gzip_gets_every_answer_gzipped(
    client: TestClient, essay: posts.Post, fields: Fields
) -> None:
    _check_every_surface(client, essay, fields, gzipped=True)


def test_the_cache_hands_no_gzip_entry_to_a_client_refusing_gzip(
    client: TestClient, essay: posts.Post
) -> None:
    _check_cache_keeps_them_apart(client, essay)


@pytest.fixture
def server(settings: Settings, tmp_path) -> Iterator[LiveServer]:  # type: ignore[no-untyped-def]
    """`workshop serve`, whose front door answers stored pages and cache hits before ASGI
    (app/serving.py), on the site the stored pages were rendered for."""
    site = {"WORKSHOP_SITE_URL": SITE_URL, "WORKSHOP_SITE_NAME": settings.site_name}
    live = start_server(settings, tmp_path, **site)
    yield live
    stop_server(live)


def test_over_a_real_server(server: LiveServer, essay: posts.Post) -> None:
    with httpx.Client(base_url=server.url, follow_redirects=False) as http:
        _check_cache_keeps_them_apart(http, essay)
        for fields in (REFUSING, REFUSED[-1]):
            _check_every_surface(http, essay, fields, gzipped=False)
        for fields in (GZIP, ACCEPTED[-1]):
            _check_every_surface(http, essay, fields, gzipped=True)
