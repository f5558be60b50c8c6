"""Jinja2 environment (autoescaped, site-wide globals and filters) and cache-busted static files."""

import gzip
import hashlib
import itertools
import json
import os
import re
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from starlette.datastructures import MutableHeaders
from starlette.responses import FileResponse, Response
from starlette.types import Message, Receive, Scope, Send

from app import timefmt, urls
from app.config import Settings
from app.etags import weak
from app.routes.conditional import VARY, accepts_gzip

IMMUTABLE = "public, max-age=31536000, immutable"
STATIC_REVALIDATE = "public, max-age=300"

# Characters that could end a <script> element or start an HTML comment inside JSON-LD;
# JSON allows the \uXXXX forms anywhere in a string, so the data stays identical.
_JSON_SCRIPT_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def _static_root() -> Path:
    return Path(str(files("app.static")))


def _templates_root() -> Path:
    return Path(str(files("app.templates")))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def static_url_factory() -> Callable[[str], str]:
    root = _static_root()
    cache: dict[str, str] = {}

    def static_url(name: str) -> str:
        # Cache-busting: the file's content hash in the query, so it can be cached for a year.
        if name not in cache:
            cache[name] = f"/static/{name}?v={_digest(root / name)}"
        return cache[name]

    return static_url


def build_fingerprint() -> str:
    """A hash of every template and static file, and of this module (its filters shape every
    page): part of page ETags and of the stored pages' key, so a deploy that changes the design
    (with the same content) never answers 304 with yesterday's page."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    for root in (_templates_root(), _static_root()):
        for path in sorted(root.iterdir()):
            if path.is_file() and path.suffix in {".html", ".xml", ".css", ".svg", ".js"}:
                h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:10]


def site_fingerprint(settings: Settings, build: str) -> str:
    """A hash of the build and of every setting that pages and feeds show: part of their ETags,
    so that a restart with another site URL, name or time zone never answers 304 with a copy
    made under the old one. The database URL, which may hold a password, is not in it."""
    shown = (
        build,
        settings.site_url,
        settings.site_name,
        settings.site_description,
        settings.timezone,
        settings.author,
        str(settings.page_size),
        str(settings.feed_size),
        settings.websub_hub,
    )
    return hashlib.sha256("\n".join(shown).encode()).hexdigest()[:10]


class StaticAssets(StaticFiles):
    """Static files: a year and `immutable` when the URL carries the file's current hash, and
    validators that tell the gzipped file from the plain one.

    The gzip middleware around the app (app/main.py) compresses every answer of at least
    `compress_from` bytes to a client that accepts gzip, and names `Vary: Accept-Encoding` on
    every answer that long, compressed or not. The gzipped file is a representation of its own:
    its ETag is Starlette's strong one (of the file's time and size) weakened, as nginx does when
    it compresses, since a strong validator must change with the bytes (RFC 9110 section 8.8.3).
    """

    def __init__(self, *, directory: str, compress_from: int) -> None:
        super().__init__(directory=directory)
        self.compress_from = compress_from

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            gzipped = accepts_gzip(scope)
            if scope["method"] == "HEAD":
                send = self._named_as_get(send, scope, gzipped)
            if gzipped:  # sees the file's own length, before a HEAD's is named
                send = self._weakened_when_compressed(send)
        await super().__call__(scope, receive, send)

    def _weakened_when_compressed(self, send: Send) -> Send:
        """`send`, weakening the ETag of a whole file the gzip middleware will compress. Told
        from the answer itself: a range of the file (206) is sent as it is, and a Range that
        FileResponse does not honour (an If-Range of another version, too many ranges) gets
        the whole file, compressed."""

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 200:
                headers = MutableHeaders(raw=message["headers"])
                length = headers.get("content-length", "")
                if length.isdigit() and int(length) >= self.compress_from:
                    headers["etag"] = weak(headers["etag"])
            await send(message)

        return sending

    def _named_as_get(self, send: Send, scope: Scope, gzipped: bool) -> Send:
        """`send` for a HEAD, naming the headers its GET gets from the gzip middleware (RFC
        9110 section 9.3.2): Starlette's FileResponse sends no body for HEAD, so the middleware
        would name the file's own length and no Content-Encoding or Vary. HEAD was answered as
        GET for that, which had the middleware compress the file for every HEAD only for the
        server to drop it; the gzipped length is worked out once per version of the file."""

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 200:
                headers = MutableHeaders(raw=message["headers"])
                length = headers.get("content-length", "")
                if length.isdigit() and int(length) >= self.compress_from:
                    headers.add_vary_header(VARY)
                    if gzipped:
                        # With a Content-Encoding, the answer passes the middleware as it is.
                        headers["content-encoding"] = "gzip"
                        if int(length) < FileResponse.chunk_size:
                            headers["content-length"] = str(self._gzipped_length(scope))
                        else:  # GET streams the file a chunk at a time: no length known
                            del headers["content-length"]
            await send(message)

        return sending

    def _gzipped_length(self, scope: Scope) -> int:
        full_path, stat_result = self.lookup_path(self.get_path(scope))
        if stat_result is None:  # gone since FileResponse found it: as a GET would fail
            raise FileNotFoundError(full_path)
        return _gzipped_length(full_path, stat_result.st_mtime_ns, stat_result.st_size)

    def file_response(
        self, full_path: Any, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        # Starlette's If-None-Match check compares the file's strong ETag with the request's
        # tags stripped of `W/` (the weak comparison GET asks for): either ETag answers 304.
        response = super().file_response(full_path, stat_result, scope, status_code)
        if response.status_code == 304 and stat_result.st_size >= self.compress_from:
            # The 304 stands for the 200 it spares and carries its validator and Vary (RFC
            # 9110 section 15.4.5). The gzip middleware names Vary only on a body long enough
            # to compress, and a 304 has none: a cache could have kept it for either encoding.
            response.headers.add_vary_header(VARY)
            if accepts_gzip(scope):
                response.headers["etag"] = weak(response.headers["etag"])
        return response

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code in (200, 304):
            query = scope.get("query_string", b"").decode("latin-1")
            current = None
            try:
                current = _digest(Path(self.directory or "") / path)
            except OSError:
                pass
            fresh = current is not None and f"v={current}" in query.split("&")
            response.headers["Cache-Control"] = IMMUTABLE if fresh else STATIC_REVALIDATE
        return response


@lru_cache(maxsize=64)
def _gzipped_length(path: str, mtime_ns: int, size: int) -> int:
    """The file's length as the gzip middleware sends it in one piece (Starlette's GZipResponder:
    zlib's gzip format at level 9, with neither name nor time in its header, the bytes of
    `gzip.compress` at mtime 0), worked out once per version of the file."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=9, mtime=0))


def json_script(value: Any) -> Markup:
    """JSON safe inside <script type="application/ld+json">, whatever the strings hold."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for char, escape in _JSON_SCRIPT_ESCAPES.items():
        text = text.replace(char, escape)
    return Markup(text)


# The essay body as its page shows it. An essay's HTML is rendered once, when it is written, and
# stored (`posts.body_html`); these steps run when the page is rendered, so a deploy reaches every
# essay already stored without rendering their Markdown again: their stored pages are made again
# as after any change to the templates or this module (`build_fingerprint`). They match only the
# Markdown renderer's own tags (`app/render.py`): raw HTML is off, so every `<` in an essay's text
# is `&lt;`, and a link an author writes has neither an id nor a class.
_HEADING_TAG = re.compile(r"<(/?)h([1-6])>")
_FOOTNOTE_REF = re.compile(r'<a href="#fn(\d+)" id="(fnref\1(?::\d+)?)">\[\1(?::\d+)?\]</a>')
# A back-link not yet named (a lettered one is named with its letter: `_lettered_backrefs`).
_FOOTNOTE_BACKREF = re.compile(r'<a href="#fnref(\d+)(?::(\d+))?" class="footnote-backref"(?=>)')
# A note's back-links when it is cited more than once: the first, then one per later reference.
_FOOTNOTE_BACKREFS = re.compile(
    r'<a href="#fnref(\d+)" class="footnote-backref">[^<]*</a>'
    r'(?: <a href="#fnref\1:\d+" class="footnote-backref">[^<]*</a>)+'
)
_FOOTNOTES = '<section class="footnotes">\n'
_BACK = "\u21a9\ufe0e"  # the renderer's back-link: ↩ drawn as text, not as an emoji


def prose(body_html: str) -> Markup:
    """An essay's stored HTML as shown below its title on the essay page."""
    # str(): on Markup, replace() would escape the tags it is given and so match none.
    html = str(body_html)
    for step in (headings_below_title, titled_footnotes, named_footnote_links, scrollable_tables):
        html = step(html)
    return Markup(html)


def headings_below_title(body_html: str) -> str:
    """The body's headings moved so that its top level is h2, each keeping its place below the
    one above it (h6 the floor): the essay's title is the page's only h1, and screen reader
    users move through a page by its heading levels. A body of `#` and `##` shows h2 and h3; one
    of `##` alone stays h2, beside "The debate" rather than under it."""
    levels = [int(level) for closing, level in _HEADING_TAG.findall(body_html) if not closing]
    shift = 2 - min(levels, default=2)
    if not shift:
        return body_html
    return _HEADING_TAG.sub(lambda m: f"<{m[1]}h{max(2, min(int(m[2]) + shift, 6))}>", body_html)


def titled_footnotes(body_html: str) -> str:
    """The notes under a heading, "Notes", that names their section: a landmark and a place in
    a screen reader's list of headings, and a title for a sighted reader. An h2 whatever the
    body's headings (`headings_below_title` makes its top level h2): the notes are the whole
    essay's, beside its sections, not inside the last one."""
    return body_html.replace(
        _FOOTNOTES,
        '<section class="footnotes" aria-labelledby="footnotes-title">\n'
        '<h2 id="footnotes-title">Notes</h2>\n',
        1,
    )


def named_footnote_links(body_html: str) -> str:
    """Footnote links with names a screen reader can say: a reference is "Footnote 1" (not
    "[1]"), a link back is "Back to reference 1" (not "↩︎"). Every reference to one note shows
    its number alone, "[1]": the renderer's "[1:1]" for the second one reads like a ratio.

    The links back from a note cited more than once are told apart by sight too: "↩︎ a b",
    one letter per reference (as Wikipedia does), where the renderer drew "↩︎ ↩︎"; their names
    say the letter: "Back to reference 1 (occurrence b)"."""
    body_html = _FOOTNOTE_BACKREFS.sub(_lettered_backrefs, body_html)
    body_html = _FOOTNOTE_REF.sub(
        lambda m: f'<a href="#fn{m[1]}" id="{m[2]}" aria-label="Footnote {m[1]}">[{m[1]}]</a>',
        body_html,
    )
    return _FOOTNOTE_BACKREF.sub(_backref_name, body_html)


def _backref_name(link: re.Match[str]) -> str:
    note, later = link[1], link[2]  # `later`: the second reference to the note is 1, and so on
    which = f" (occurrence {int(later) + 1})" if later else ""
    return f'{link[0]} aria-label="Back to reference {note}{which}"'


def _lettered_backrefs(links: re.Match[str]) -> str:
    letters = (_letter(n) for n in itertools.count())

    def lettered_link(link: re.Match[str]) -> str:
        # The name holds the letter shown (WCAG 2.5.3, label in name: "click b" finds it).
        letter = next(letters)
        name = f"Back to reference {links[1]} (occurrence {letter})"
        return f'<a href="{link[1]}" class="footnote-backref" aria-label="{name}">{letter}</a>'

    lettered = re.sub(
        r'<a href="([^"]*)" class="footnote-backref">[^<]*</a>', lettered_link, links[0]
    )
    # The arrow says what the letters are to a sighted reader; each link's name says it aloud.
    return (
        f'<span class="footnote-backrefs"><span aria-hidden="true">{_BACK}</span> {lettered}</span>'
    )


def _letter(n: int) -> str:
    """a, b, ... z, aa, ab, ...: the name of a note's n-th back-link, from 0."""
    name = ""
    n += 1
    while n:
        n, rest = divmod(n - 1, 26)
        name = chr(ord("a") + rest) + name
    return name


def scrollable_tables(body_html: str) -> str:
    """Each table in a box of its own that scrolls sideways when the table is wider than a
    phone. A box that scrolls must be reachable by keyboard (WCAG 2.1.1): a tab stop, with a
    role and a name for screen readers. Every `<table>` is the renderer's and none nests."""
    first, *tables = body_html.split("<table>")
    boxed = (
        f'<div class="table-scroll" role="region" aria-label="Table {n}" tabindex="0">'
        f"<table>{rest.replace('</table>', '</table></div>', 1)}"
        for n, rest in enumerate(tables, 1)
    )
    return first + "".join(boxed)


def page_path(request: Any) -> str:
    """The path a page is known by (its canonical and Open Graph URL): a list page's own cursor
    is part of it, so page 3 of an archive is not announced as a copy of page 1."""
    for name in ("before", "after"):
        value = request.query_params.get(name)
        if value:
            return f"{request.url.path}?{urlencode({name: value})}"
    return str(request.url.path)


def make_templates(settings: Settings) -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(_templates_root()))
    env = templates.env
    env.autoescape = True
    env.auto_reload = False  # templates ship with the build: no stat() of each one per render
    env.trim_blocks = True
    env.lstrip_blocks = True
    env.globals.update(
        settings=settings,
        static_url=static_url_factory(),
        urls=urls,
        page_path=page_path,
        build_fingerprint=(build := build_fingerprint()),
        site_fingerprint=site_fingerprint(settings, build),
    )
    tz = settings.tz

    def cycle_line(post: Any) -> str:
        return timefmt.cycle_line(post.cycle, post.published_at, tz)

    def iso(instant: datetime) -> str:
        return instant.astimezone(tz).isoformat(timespec="seconds")

    env.filters["cycle_line"] = cycle_line
    env.filters["long_date"] = lambda instant: timefmt.long_date(instant, tz)
    env.filters["percent"] = lambda value: f"{round(value * 100)}%"
    env.filters["iso"] = iso
    env.filters["json_script"] = json_script
    env.filters["prose"] = prose
    return templates
