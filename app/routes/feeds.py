"""Feeds, sitemaps and robots.txt: thin handlers around app/feeds.py and app/sitemap.py.

Every document here answers conditional GETs from the content version alone: a poll whose copy is
current costs one small query and gets an empty 304, without any rendering.
"""

import re
import time
from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from sqlmodel import Session

from app import cache, feeds, freshness, sitemap, urls
from app.db import SessionDep
from app.errors import SitemapNotFound
from app.feeds import MEDIA_TYPES, FeedFormat
from app.routes.conditional import not_modified

router = APIRouter(include_in_schema=False)
GET_HEAD = ["GET", "HEAD"]
_CHILD = re.compile(r"^(?P<section>[a-z]+)-(?P<chunk>[0-9]{1,9})\.xml$")


def _snapshot(session: Session) -> None:
    """Read the version and the documents from one snapshot, so the body always matches the
    ETag (PostgreSQL's default READ COMMITTED would let a write land between two queries;
    SQLite's read transactions are already snapshots)."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


# A feed is read as the type it says: a browser never takes one for a page to render.
NOSNIFF = {"X-Content-Type-Options": "nosniff"}


def _conditional(request: Request, session: Session) -> tuple[dict[str, str], Response | None]:
    """Headers for the answer, and the 304 to send instead when the client's copy is current."""
    _snapshot(session)
    state = freshness.content_state(session)
    site = request.app.state.templates.env.globals["site_fingerprint"]
    now = time.time()
    headers = freshness.validators(state, request.url.path, site, now)
    if "Last-Modified" not in headers:  # a stored copy of this answer must not outlive that
        cache.refresh_at(request.scope, state.sendable_at)
    if freshness.is_fresh(request.headers, state, request.url.path, site):
        return headers, not_modified(headers)
    return headers, None


def _feed(request: Request, session: Session, kind: str, slug: str, fmt: FeedFormat) -> Response:
    headers, not_modified = _conditional(request, session)
    if not_modified is not None:
        # A validator from an earlier answer shows the tag or story exists (they are never
        # deleted), so that poll stays one query; "If-None-Match: *" claims no copy at all, and
        # the feed of an unknown tag or story must stay a 404 (RFC 9110 section 13.1.2).
        star = any(t.strip() == "*" for t in request.headers.get("if-none-match", "").split(","))
        if star and kind != "site":
            feeds.resolve_scope(session, kind, slug)
        return not_modified
    scope = feeds.SITE if kind == "site" else feeds.resolve_scope(session, kind, slug)
    body = feeds.render_feed(session, request.app.state.settings, scope, fmt)
    return Response(body, media_type=MEDIA_TYPES[fmt], headers={**headers, **NOSNIFF})


def _site_feed(fmt: FeedFormat) -> Callable[..., Response]:
    def endpoint(request: Request, session: SessionDep) -> Response:
        return _feed(request, session, "site", "", fmt)

    return endpoint


def _scoped_feed(kind: str, fmt: FeedFormat) -> Callable[..., Response]:
    def endpoint(request: Request, slug: str, session: SessionDep) -> Response:
        return _feed(request, session, kind, slug, fmt)

    return endpoint


def _register_feeds() -> None:
    """/feed.xml, /atom.xml, /feed.json, and the same under /tags/{slug}/ and /stories/{slug}/."""
    for fmt, name in feeds.FILE_NAMES.items():
        router.add_api_route(f"/{name}", _site_feed(fmt), methods=GET_HEAD)
        for kind, prefix in (("tag", "/tags"), ("story", "/stories")):
            router.add_api_route(
                f"{prefix}/{{slug}}/{name}", _scoped_feed(kind, fmt), methods=GET_HEAD
            )


_register_feeds()


def _sitemap(
    request: Request, session: Session, section: str | None, chunk: int | None
) -> Response:
    headers, not_modified = _conditional(request, session)
    if not_modified is not None:
        return not_modified
    session.close()  # the stream reads through its own session, batch by batch
    body = sitemap.stream(request.app.state.engine, request.app.state.settings, section, chunk)
    media_type = "application/xml; charset=utf-8"
    return StreamingResponse(body, media_type=media_type, headers={**headers, **NOSNIFF})


@router.api_route("/sitemap.xml", methods=GET_HEAD)
def sitemap_xml(request: Request, session: SessionDep) -> Response:
    return _sitemap(request, session, None, None)


@router.api_route("/sitemaps/{name}", methods=GET_HEAD)
def sitemap_child(request: Request, name: str, session: SessionDep) -> Response:
    match = _CHILD.match(name)
    if match is None:
        raise SitemapNotFound(f"no sitemap {name!r}")
    section, chunk = match["section"], int(match["chunk"])
    sitemap.check_child(section, chunk)
    return _sitemap(request, session, section, chunk)


@router.api_route("/robots.txt", methods=GET_HEAD, response_class=PlainTextResponse)
def robots(request: Request) -> PlainTextResponse:
    settings = request.app.state.settings
    text = (
        "User-agent: *\n"
        "Disallow: /api/\n"
        "Disallow: /search\n"
        f"Sitemap: {urls.absolute(settings, '/sitemap.xml')}\n"
    )
    return PlainTextResponse(text, headers={"Cache-Control": "public, max-age=3600"})
