"""Reader pages: thin handlers that call the services and pick a template.

Every page is a pure function of (path + query, content version), which is what makes the
HTTP caching below honest: the ETag is derived from exactly those two things (plus the build),
so answering If-None-Match costs one tiny query and no rendering, and the response cache keys
on the same values. One exception: an essay page served from its stored copy (app/essaypage.py,
`StoredEssayPages`) carries that copy's own ETag, computed when it was stored, which changes
exactly when the page does; when it renders live it uses the content-version ETag like every
other page.
"""

import hashlib
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session
from starlette.types import ASGIApp, Receive, Scope, Send

from app import browse, derived, essaypage, posts, search
from app.asgi import at_shutdown
from app.cache import Answer
from app.db import SessionDep
from app.errors import BadCursor, PostGone, PostNotFound
from app.routes.conditional import VARY, gzip_acceptable, not_modified
from app.urls import post_path

router = APIRouter(include_in_schema=False)

# Short for browsers, longer for a CDN, and a CDN may serve a stale copy while it revalidates.
PAGE_CACHE_CONTROL = "public, max-age=60, s-maxage=300, stale-while-revalidate=600"
MAX_SEARCH_PAGE = 50


# Every reader page is its own document: no script runs (the JSON-LD block is data, which a
# policy does not block), styles come from /static (the meters' widths are style attributes),
# images from essays may be on any https host, and no other site may frame a page. Markdown
# already refuses raw HTML and unsafe links; this is the browser's second lock on the door.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; style-src-attr 'unsafe-inline'; "
    "img-src 'self' https:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
}


def render(
    request: Request, template: str, status_code: int = 200, **context: object
) -> HTMLResponse:
    response = request.app.state.templates.TemplateResponse(
        request, template, context, status_code=status_code
    )
    response.headers.update(PAGE_SECURITY_HEADERS)
    return response


def error_page(request: Request, status: int, error: Exception | None = None) -> HTMLResponse:
    """The HTML error page: what went wrong in a reader's words, and the ways on (search, the
    newest essays, the archive). The status code is the answer's; the page shows none, nor the
    precise detail ("no post with id 99999"), which is for API clients, in the problem+json
    the same request gets with another Accept."""
    heading, message = _reader_words(status, error)
    retry = None
    if isinstance(error, BadCursor):  # a list page's cursor: the list itself is there
        retry = ("Start from the first page", _here(request))
    elif status == 405:  # sent to, by a form elsewhere: the page itself can be read
        retry = ("Go to the page", _here(request))
    elif status >= 500:  # the database is down or full: the same page may answer soon
        retry = ("Try again", _here(request, with_query=True))
    return render(
        request,
        "error.html",
        status_code=status,
        heading=heading,
        message=message,
        retry=retry,
        guess=_search_guess(request, error) if status < 500 else None,
    )


def _reader_words(status: int, error: Exception | None) -> tuple[str, str]:
    if status == 410:  # only a withdrawn essay is gone
        return "This essay was withdrawn", "It is no longer published here."
    if status == 404 and isinstance(error, PostNotFound):
        return "This essay doesn’t exist", "The link may be mistyped or cut short."
    if isinstance(error, BadCursor):
        return "This page of the list doesn’t exist", "The link may be mistyped or cut short."
    if status == 405:  # a form elsewhere sent something here
        return "This page can only be read", "It doesn’t take what your browser sent."
    if status >= 500:
        return "This page can’t be shown right now", "Please try again in a minute."
    return "This page doesn’t exist", "The link may be mistyped, or the page may have moved."


def _search_guess(request: Request, error: Exception | None) -> str:
    """The words of a missing essay's slug, put in the page's search box: a link to an essay
    whose number was mistyped or cut short still names what the reader came for."""
    matched = _ESSAY_PATH.fullmatch(request.url.path)
    if not isinstance(error, PostNotFound) or matched is None:
        return ""
    return " ".join(re.findall(r"[a-z0-9]+", matched[2].lower()))[:200]


def _here(request: Request, with_query: bool = False) -> str:
    """A link to this request's own path (and query) on this site: percent-encoded, and never
    `//host/...`, which a browser would take for another site."""
    link = "/" + quote(request.url.path.lstrip("/"))
    query = request.url.query
    return f"{link}?{query}" if with_query and query else link


def page_etag(request: Request, version: int) -> str:
    site = request.app.state.templates.env.globals["site_fingerprint"]  # the build and settings
    key = f"{request.url.path}?{request.url.query}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    # Weak: the gzip middleware may change the bytes, never the meaning.
    return f'W/"{version}-{site}-{digest}"'


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    wanted = etag.removeprefix("W/")
    return any(
        t.strip() in (etag, wanted) or t.strip().removeprefix("W/") == wanted
        for t in header.split(",")
    )


def _is_star(header: str | None) -> bool:
    return header is not None and any(t.strip() == "*" for t in header.split(","))


def cached(request: Request, session: SessionDep, build: Callable[[], Response]) -> Response:
    """Answer 304 when the client holds this page at the current content version, else build it."""
    etag = page_etag(request, posts.content_version(session))
    headers = {"ETag": etag, "Cache-Control": PAGE_CACHE_CONTROL}
    if_none_match = request.headers.get("if-none-match")
    if _etag_matches(if_none_match, etag):
        return not_modified(headers)
    response = build()
    if response.status_code == 200:
        # "*" matches only a page that exists: an unknown, withdrawn or moved one keeps its
        # 404, 410 or 301 (RFC 9110 section 13.1.2).
        if _is_star(if_none_match):
            return not_modified(headers)
        response.headers.update(headers)
    return response


def _path_int(text: str, what: str, minimum: int = 1) -> int:
    """Path numbers: anything that is not a plausible id is a 404 page, never a 422 or a 500."""
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise PostNotFound(f"no {what} {text[:40]!r}")
    value = int(text)
    if not minimum <= value <= browse.MAX_POST_ID:
        raise PostNotFound(f"no {what} {value}")
    return value


@router.get("/", response_class=HTMLResponse)
def index(
    request: Request, session: SessionDep, before: str | None = None, after: str | None = None
) -> Response:
    def build() -> Response:
        page = browse.newest(session, request.app.state.settings.page_size, before, after)
        return render(request, "index.html", page=page, base_path="/")

    return cached(request, session, build)


@router.get("/archive", response_class=HTMLResponse)
def archive(request: Request, session: SessionDep) -> Response:
    def build() -> Response:
        tz = request.app.state.settings.tz
        months = derived.at_version(
            session, ("archive months", tz.key), lambda: browse.archive_months(session, tz)
        )
        years: dict[int, list[browse.Month]] = {}
        for month in months:
            years.setdefault(month.year, []).append(month)
        return render(request, "archive.html", years=years, total=sum(m.count for m in months))

    return cached(request, session, build)


@router.get("/archive/{year}/{month}", response_class=HTMLResponse)
def archive_month(
    request: Request,
    session: SessionDep,
    year: str,
    month: str,
    before: str | None = None,
    after: str | None = None,
) -> Response:
    def build() -> Response:
        digits = year.isascii() and year.isdigit() and month.isascii() and month.isdigit()
        if not (len(year) == 4 and len(month) == 2 and digits):
            raise browse.PageNotFound("archive pages look like /archive/2026/04")
        tz = request.app.state.settings.tz
        size = browse.MONTH_PAGE_SIZE
        found = browse.month_entries(session, int(year), int(month), tz, size, before, after)
        label = browse.Month(int(year), int(month), len(found.entries)).label
        return render(
            request, "archive_month.html", month=found, label=label, base_path=request.url.path
        )

    return cached(request, session, build)


@router.get("/tags/{tag_slug}", response_class=HTMLResponse)
def tag(
    request: Request,
    session: SessionDep,
    tag_slug: str,
    before: str | None = None,
    after: str | None = None,
) -> Response:
    def build() -> Response:
        found = browse.tag_by_slug(session, tag_slug)
        size = request.app.state.settings.page_size
        page = browse.tagged(session, found, size, before, after)
        return render(request, "tag.html", tag=found, page=page, base_path=request.url.path)

    return cached(request, session, build)


@router.get("/stories/{story_slug}", response_class=HTMLResponse)
def story(
    request: Request,
    session: SessionDep,
    story_slug: str,
    before: str | None = None,
    after: str | None = None,
) -> Response:
    def build() -> Response:
        found = browse.story_by_slug(session, story_slug)
        size = request.app.state.settings.page_size
        page = browse.story_timeline(session, found, size, before, after)
        return render(request, "story.html", story=found, page=page, base_path=request.url.path)

    return cached(request, session, build)


@router.get("/search", response_class=HTMLResponse)
def search_page(request: Request, session: SessionDep, q: str = "", page: str = "1") -> Response:
    def build() -> Response:
        number = int(page) if page.isascii() and page.isdigit() and len(page) < 4 else 1
        number = min(max(number, 1), MAX_SEARCH_PAGE)
        query = search.parse_query(q)
        size = request.app.state.settings.page_size
        hits = search.search(session, query, size + 1, (number - 1) * size)
        return render(
            request,
            "search.html",
            q=q[:200],
            query=query,
            hits=hits[:size],
            number=number,
            more=len(hits) > size and number < MAX_SEARCH_PAGE,
        )

    return cached(request, session, build)


@router.get("/read/{post_id}", response_class=RedirectResponse)
@router.get("/read/{post_id}/", response_class=RedirectResponse)
def read_without_slug(post_id: str, session: SessionDep) -> Response:
    return _redirect_to(posts.get_post(session, _path_int(post_id, "essay")))


ESSAY_ROUTE = "/read/{post_id}/{slug}"


@router.get(ESSAY_ROUTE, response_class=HTMLResponse)
def read(request: Request, post_id: str, slug: str) -> Response:
    """The essay page, rendered live: `StoredEssayPages` answers every request for a current
    stored page before routing, so what reaches this route is a wrong slug (301), a withdrawn
    (410) or unknown (404) essay, or a page with no current stored copy (see app/essaypage.py)."""
    number = _path_int(post_id, "essay")
    # `/read/0701/...` is essay 701's page under another address: sent to the canonical one.
    return _live_essay_page(request, number, slug, canonical=post_id == str(number))


class StoredEssayPages:
    """ASGI wrapper, the first after the request log: a GET or HEAD of a published essay whose
    current page is stored is answered here, with the stored bytes (identity or gzip, as the
    client accepts) and the page's own ETag, before the response cache and FastAPI. Readers
    arriving from search engines and links spread over the whole archive, more than any
    per-worker cache holds; this one primary-key read (no template, no compression, no
    Response object) keeps a random essay of a large archive as fast as a popular one.
    Anything else (a wrong slug, a withdrawn or unknown essay, no current stored copy, a
    database error) goes on inside, to the cache and the route, which answer it as usual.
    """

    def __init__(self, app: ASGIApp, pages: essaypage.StoredPages) -> None:
        self.app, self.pages = app, pages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, at_shutdown(receive, self.pages.close), send)
            return
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            matched = _ESSAY_PATH.fullmatch(scope["path"])
            if matched and await self._answer(scope, matched, send):
                return
        await self.app(scope, receive, send)

    def answer_now(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]]
    ) -> "Answer | Coroutine[Any, Any, Answer | None] | None":
        """The stored page's answer, if it can be told without waiting; when only a read on
        the event loop or in a thread can tell (PostgreSQL, a page this worker does not keep;
        SQLite, a page whose bytes are on disk), the coroutine that reads it and gives the
        answer (None: the route answers after all); None: not a stored page's request, ask
        through ASGI. Asked by the server's front door (`app/serving.py`) before any ASGI
        work."""
        if method not in ("GET", "HEAD"):
            return None
        matched = _ESSAY_PATH.fullmatch(path)
        number = _stored_number(matched)
        if number is None or matched is None:
            return None
        gzip, if_none_match = _essay_asked(headers)
        head = method == "HEAD"
        try:
            found = self.pages.get_now(number, gzip)
        except Exception:  # unknown (404) or unreadable (503): the route says so
            return None
        if found is None:  # `get_now` could not tell: only the read will
            reading = self.pages.read(number, gzip)
            return _answer_when_read(reading, matched, gzip, if_none_match, head)
        return _stored_reply(found, matched, gzip, if_none_match, head)

    async def _answer(self, scope: Scope, matched: re.Match[str], send: Send) -> bool:
        number = _stored_number(matched)
        if number is None:
            return False
        gzip, if_none_match = _essay_asked(scope["headers"])
        head = scope["method"] == "HEAD"
        reading = self.pages.get(number, gzip)
        answer = await _answer_when_read(reading, matched, gzip, if_none_match, head)
        if answer is None:
            return False
        scope["workshop.route_label"] = ESSAY_ROUTE  # for the request log and metrics
        status, headers, body = answer
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return True


async def _answer_when_read(
    reading: Awaitable[essaypage.Stored],
    matched: re.Match[str],
    gzip: bool,
    if_none_match: bytes | None,
    head: bool,
) -> Answer | None:
    """The stored page's answer once `reading` has it; None: the route answers."""
    try:
        found = await reading
    except Exception:  # unknown (404) or unreadable (503): the route says so
        return None
    return _stored_reply(found, matched, gzip, if_none_match, head)


def _stored_number(matched: re.Match[str] | None) -> int | None:
    if matched is None or matched[1].startswith("0"):  # not canonical: the route redirects
        return None
    number = int(matched[1])
    return number if 1 <= number <= browse.MAX_POST_ID else None


def _essay_asked(headers: list[tuple[bytes, bytes]]) -> tuple[bool, bytes | None]:
    encodings = if_none_match = None
    for name, value in headers:
        if name == b"accept-encoding":  # several field lines are one list (RFC 9110 5.3)
            encodings = value if encodings is None else encodings + b"," + value
        elif name == b"if-none-match" and if_none_match is None:  # the first, as Starlette
            if_none_match = value
    # As the gzip layer and the response cache decide (app/routes/conditional.py).
    return encodings is not None and gzip_acceptable(encodings), if_none_match


def _stored_reply(
    found: essaypage.Stored,
    matched: re.Match[str],
    gzip: bool,
    if_none_match: bytes | None,
    head: bool,
) -> Answer | None:
    """The answer from a current stored page; None when the route must answer (no current
    page, not published, another slug)."""
    page, etag = found.page, found.etag
    if page is None or etag is None or found.status != posts.STATUS_PUBLISHED:
        return None
    if found.slug != matched[2]:
        return None
    if if_none_match is not None and (
        if_none_match == etag  # what a client that kept the ETag sends back
        or _etag_matches(if_none_match.decode("latin-1"), etag.decode())
        or _is_star(if_none_match.decode("latin-1"))
    ):
        return 304, [(b"etag", etag), *_STORED_304], b""
    headers = [
        (b"etag", etag),
        (b"content-length", b"%d" % len(page)),
        *(_STORED_GZIP if gzip else _STORED_IDENTITY),
    ]
    return 200, headers, b"" if head else page


_ESSAY_PATH = re.compile(r"/read/([0-9]{1,10})/([^/]+)")
# What a stored page's answers carry besides the ETag (and length): the same as a live page's.
_STORED_304 = [
    (b"cache-control", PAGE_CACHE_CONTROL.encode()),
    (b"vary", VARY.encode()),
]
_STORED_IDENTITY = [
    *_STORED_304,
    (b"content-type", b"text/html; charset=utf-8"),
    *((name.lower().encode(), value.encode()) for name, value in PAGE_SECURITY_HEADERS.items()),
]
_STORED_GZIP = [*_STORED_IDENTITY, (b"content-encoding", b"gzip")]


def _live_essay_page(request: Request, number: int, slug: str, canonical: bool) -> Response:
    renderer = request.app.state.renderer
    with Session(request.app.state.engine) as session:

        def build() -> Response:
            post = essaypage.page_row(session, number)
            if post.status == posts.STATUS_DELETED:
                raise PostGone(f"essay {number} was withdrawn")
            if slug != post.slug or not canonical:
                return _redirect_to(post)
            page = renderer.finish(essaypage.render(session, renderer, post))
            return HTMLResponse(page, headers=PAGE_SECURITY_HEADERS)

        return cached(request, session, build)


@router.get("/cycle/{cycle}")
def cycle(cycle: str, session: SessionDep) -> Response:
    number = _path_int(cycle, "cycle", minimum=0)
    post = posts.get_post(session, posts.post_id_for_cycle(session, number), include_deleted=True)
    if post.status == posts.STATUS_DELETED:  # the answer its page gives
        raise PostGone(f"essay {post.id} (cycle {number}) was withdrawn")
    return _redirect_to(post, status=302)


def _redirect_to(
    post: posts.Post | essaypage.PageRow | essaypage.Stored, status: int = 301
) -> RedirectResponse:
    # Kept as long as a page: a browser keeps a 301 without Cache-Control for good, and a title
    # edited, then edited back, would send its readers around in a loop.
    headers = {"Cache-Control": PAGE_CACHE_CONTROL}
    return RedirectResponse(post_path(post), status_code=status, headers=headers)  # type: ignore[arg-type]
