"""What the benchmark drives: each endpoint's URL (or wrk Lua script), found from the archive."""

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
from sqlalchemy import select
from sqlmodel import Session

from app import browse, db
from app.config import Settings
from app.models import STATUS_PUBLISHED, EssayPage, Post, PostStory, Story, Tag
from app.routes.ingest import _encode_cursor as api_cursor
from bench.corpus import COMMON_TAG, COMMON_WORD, PHRASE, RARE_WORD, Corpus
from bench.load import WRK_THREADS

ESSAY_SAMPLE = 5000  # random essay paths handed to wrk (all of them in a smaller archive)
# The same drawn from every essay of the archive: readers spread over more essays than a worker
# keeps places for (a crawler), the case the sample above does not show past 20,000 essays.
EVERY_ESSAY = "essay (every essay, evenly)"
PAGE_SIZE = 20  # the server's default page_size: the last page of / is the 20 oldest essays
API_LIMIT = 20
SITEMAP_CHILD = "/sitemaps/posts-1.xml"  # ids 5,000-9,999: exists once the archive passes 5,000


@dataclass
class Endpoint:
    name: str
    path: str  # the representative URL path (its body is what nginx serves)
    script: Path | None = None
    headers: dict[str, str] = field(default_factory=dict)
    absent: str = ""  # why it is not measured (not built yet, no ETag, ...)
    status: int = 200
    static_url: str = ""  # nginx serving the same bytes
    # Run once through before the row, on both sides: a crawler's row is measured on its
    # second visit, when every page has been read once (`one_pass_script`).
    first_pass: Path | None = None


def target_url(base: str, path: str) -> str:
    """`path` (or the path and query of a full URL the site gave) on the server at `base`."""
    if path.startswith("http"):
        parts = urlsplit(path)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
    return base + path


def _lua_list(paths: list[str]) -> str:
    return "{\n" + ",\n".join(json.dumps(p) for p in paths) + "\n}"


def chosen(name: str, wanted: list[str]) -> bool:
    """Whether `--endpoints` chose this endpoint: every one when empty; else one whose name
    contains a part, or is a part written `=name` (`=/` is the front page alone)."""
    if not wanted:
        return True
    return any(name == w[1:] if w.startswith("=") else w in name for w in wanted)


def random_essays_script(paths: list[str], out: Path) -> Path:
    out.write_text(f"""-- GET a random essay of the archive on every request
local paths = {_lua_list(paths)}
init = function(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6) + tonumber(tostring({{}}):sub(8), 16))
end
request = function()
  return wrk.format("GET", paths[math.random(#paths)])
end
""")
    return out


def one_pass_script(paths: list[str], threads: int, out: Path) -> Path:
    """GET every path once, split among wrk's threads; a thread whose share is answered stops
    and leaves a file `<out>.done-<n>` (wrk itself runs for its `-d`: `load.wrk_pass` stops it
    once every thread has)."""
    out.write_text(f"""-- GET each path once, thread n taking every path n, n + threads, ...
local paths = {_lua_list(paths)}
local done_prefix = {json.dumps(str(out) + ".done-")}
local threads, made = {threads}, 0
setup = function(thread)
  made = made + 1
  thread:set("first", made)
end
init = function(args)
  nxt, answered = first, 0
  share = math.floor((#paths - first) / threads) + 1
end
request = function()
  local path = paths[nxt] or paths[1]
  nxt = nxt + threads
  return wrk.format("GET", path)
end
response = function(status, headers, body)
  answered = answered + 1
  if answered == share then
    io.open(done_prefix .. first, "w"):close()
    wrk.thread:stop()
  end
end
""")
    return out


def ingest_script(token: str, base_cycle: int, out: Path) -> Path:
    """POST one new essay per request; every thread counts its own cycles (no conflicts)."""
    sample = Corpus(1, seed=99).essay(0).model_dump(mode="json")
    sample.update(cycle=-1, title="Ingest @@N@@: " + sample["title"], published_at=None)
    template = json.dumps(sample).replace("-1", "@@N@@", 1)
    out.write_text(f"""-- POST /api/v1/posts with a unique cycle per request
local template = [==[{template}]==]
local headers = {{["Content-Type"] = "application/json", ["Authorization"] = "Bearer {token}"}}
local threads = 0
local counter = 0
setup = function(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
request = function()
  counter = counter + 1
  local n = tostring({base_cycle} + (tid or 0) * 1000000 + counter)
  return wrk.format("POST", "/api/v1/posts", headers, (template:gsub("@@N@@", n)))
end
""")
    return out


def _link(html: str, rel: str) -> str | None:
    found = re.search(rf'<(?:a|link)\b[^>]*\brel="{rel}"[^>]*\bhref="([^"]+)"', html) or re.search(
        rf'<(?:a|link)\b[^>]*\bhref="([^"]+)"[^>]*\brel="{rel}"', html
    )
    return _local(found.group(1).replace("&amp;", "&")) if found else None


def _local(url: str) -> str:
    """A link as a path on the server measured (links name the site's public address)."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "") if parts.scheme else url


def essay_pages(database_url: str) -> Iterator[tuple[str, bytes]]:
    """Every published essay's path and stored page, streamed: what nginx serves beside the
    random-essay rows (`bench/__main__.py` checks a sample against the server's answers)."""
    engine = db.make_engine(Settings(_env_file=None, database_url=database_url))  # type: ignore[call-arg]
    try:
        with Session(engine) as session:
            rows = session.execute(
                select(Post.id, Post.slug, EssayPage.html)  # type: ignore[call-overload]
                .join(EssayPage, EssayPage.post_id == Post.id)
                .where(Post.status == STATUS_PUBLISHED)
                .execution_options(yield_per=500)
            )
            for post_id, slug, html in rows:
                yield f"/read/{post_id}/{slug}", html.encode()
    finally:
        engine.dispose()


def discover(base: str, database_url: str, workdir: Path) -> list[Endpoint]:
    engine = db.make_engine(Settings(_env_file=None, database_url=database_url))  # type: ignore[call-arg]
    try:
        with Session(engine) as session:
            published = Post.status == STATUS_PUBLISHED
            rows = session.execute(
                select(Post.id, Post.slug)  # type: ignore[call-overload]
                .where(published)
                .order_by(Post.id)
            ).all()
            step = max(1, len(rows) // ESSAY_SAMPLE)
            every = [f"/read/{i}/{s}" for i, s in rows]
            essays = every[::step]
            oldest_first = (
                select(Post)
                .where(published)  # type: ignore[arg-type]
                .order_by(Post.published_at.asc(), Post.id.asc())  # type: ignore[attr-defined, union-attr]
            )
            # The key just above the oldest page: ?before= it is the last page of `/`, and the
            # API's cursor there is its deepest full page (constructed, as a client following
            # `next` to the end would reach it).
            last_key = session.execute(oldest_first.offset(PAGE_SIZE).limit(1)).scalars().first()
            deep_key = session.execute(oldest_first.offset(API_LIMIT).limit(1)).scalars().first()
            last_page = "/?before=" + browse.encode_cursor(last_key) if last_key is not None else ""
            deep_api = (
                f"/api/v1/posts?limit={API_LIMIT}&cursor={api_cursor(deep_key)}"
                if deep_key is not None
                else ""
            )
            middle = session.get(Post, rows[len(rows) // 2][0])
            assert middle is not None
            month = middle.published_at.strftime("%Y/%m")
            tag = session.execute(
                select(Tag.slug).where(Tag.name == COMMON_TAG)  # type: ignore[call-overload]
            ).scalar()
            story = session.execute(
                select(Story.slug)  # type: ignore[call-overload]
                .join(PostStory, PostStory.story_id == Story.id)
                .where(PostStory.post_id == middle.id)
            ).scalar()
    finally:
        engine.dispose()

    popular = essays[len(essays) // 2]
    found = [
        Endpoint(
            "essay (random ids)", popular, random_essays_script(essays, workdir / "essays.lua")
        ),
        Endpoint(
            EVERY_ESSAY,
            popular,
            random_essays_script(every, workdir / "every.lua"),
            first_pass=one_pass_script(every, WRK_THREADS, workdir / "every-pass.lua"),
        ),
        Endpoint("essay (one popular)", popular),
        Endpoint("/", "/"),
        Endpoint("/ next page", ""),
        Endpoint("/ last page", last_page, absent="" if last_page else "absent (one page)"),
        Endpoint("/archive", "/archive"),
        Endpoint("/archive/{yyyy}/{mm}", f"/archive/{month}"),
        Endpoint("/tags/{common}", f"/tags/{tag or 'none'}"),
        Endpoint("/tags/{common}/feed.xml", f"/tags/{tag or 'none'}/feed.xml"),
        Endpoint("/stories/{slug}", f"/stories/{story or 'none'}"),
        Endpoint("/search common word", f"/search?q={COMMON_WORD}"),
        Endpoint("/search rare word", f"/search?q={RARE_WORD}"),
        Endpoint("/search phrase", "/search?q=" + quote(f'"{PHRASE}"')),
        Endpoint("/feed.xml", "/feed.xml"),
        Endpoint("/atom.xml", "/atom.xml"),
        Endpoint("/feed.json", "/feed.json"),
        Endpoint("/sitemap.xml (index past 5,000)", "/sitemap.xml"),
        Endpoint("/sitemaps/posts-1.xml (ids 5,000+)", SITEMAP_CHILD),
        Endpoint("GET /api/v1/posts", "/api/v1/posts"),
        Endpoint("GET /api/v1/posts next page", ""),
        Endpoint(
            "GET /api/v1/posts deepest page",
            deep_api,
            absent="" if deep_api else "absent (one page)",
        ),
        Endpoint("essay 304 (If-None-Match)", popular, status=304),
        Endpoint("/ 304 (If-None-Match)", "/", status=304),
        Endpoint("/feed.xml 304 (If-None-Match)", "/feed.xml", status=304),
        Endpoint("/feed.json 304 (If-None-Match)", "/feed.json", status=304),
        Endpoint("/tags/{common} 304 (If-None-Match)", f"/tags/{tag or 'none'}", status=304),
    ]
    by_name = {e.name: e for e in found}
    with httpx.Client(base_url=base, timeout=60) as client:
        home = client.get("/")
        nxt = _link(home.text, "next")
        second = by_name["/ next page"]
        second.path, second.absent = (nxt, "") if nxt else ("/", "absent (no rel=next on /)")
        last = by_name["/ last page"]
        if last.path and _link(client.get(last.path).text, "next") is not None:
            last.absent = "absent (the constructed last page links to a next one)"
        api = client.get("/api/v1/posts")
        api_next = _api_next(api)
        api_second = by_name["GET /api/v1/posts next page"]
        api_second.path = api_next or "/api/v1/posts"
        api_second.absent = "" if api_next else "absent (no next link in GET /api/v1/posts)"
        deepest = by_name["GET /api/v1/posts deepest page"]
        if deepest.path and _api_next(client.get(deepest.path)) is not None:
            deepest.absent = "absent (the constructed deepest page links to a next one)"
        if b"<sitemapindex" not in client.get("/sitemap.xml").content:
            # Below 5,000 addresses the sitemap is one file, and this chunk an empty urlset:
            # 101 bytes against 0.7 MB, nothing to compare a full chunk with.
            by_name["/sitemaps/posts-1.xml (ids 5,000+)"].absent = "absent (no sitemap index)"
        for endpoint in found:
            if endpoint.absent:
                continue
            answer = client.get(endpoint.path)
            if answer.status_code != 200:
                endpoint.absent = f"absent ({answer.status_code})"
            elif endpoint.status == 304:
                etag = answer.headers.get("etag")
                if etag is None:
                    endpoint.absent = "absent (no ETag)"
                else:
                    endpoint.headers = {"If-None-Match": etag}
    return found


def _api_next(answer: httpx.Response) -> str | None:
    if answer.status_code != 200:
        return None
    if "next" in answer.links:
        return _local(str(answer.links["next"]["url"]))
    try:
        doc = answer.json()
    except ValueError:
        return None
    for key in ("next", "next_url"):
        for holder in (doc, doc.get("links", {}) if isinstance(doc, dict) else {}):
            if isinstance(holder, dict) and isinstance(holder.get(key), str):
                return _local(str(holder[key]))
    return None
