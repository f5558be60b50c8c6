"""What the benchmark drives: each endpoint's URL (or wrk Lua script), found from the archive."""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
from sqlalchemy import select
from sqlmodel import Session

from app import db
from app.config import Settings
from app.models import STATUS_PUBLISHED, Post, PostStory, Story, Tag
from bench.corpus import COMMON_TAG, COMMON_WORD, PHRASE, RARE_WORD, Corpus

ESSAY_SAMPLE = 5000  # random essay paths handed to wrk (all of them in a smaller archive)


@dataclass
class Endpoint:
    name: str
    path: str  # the representative URL path (its body is what nginx serves)
    script: Path | None = None
    headers: dict[str, str] = field(default_factory=dict)
    absent: str = ""  # why it is not measured (not built yet, no ETag, ...)
    status: int = 200
    static_url: str = ""  # nginx serving the same bytes


def _lua_list(paths: list[str]) -> str:
    return "{\n" + ",\n".join(json.dumps(p) for p in paths) + "\n}"


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
    return found.group(1).replace("&amp;", "&") if found else None


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
            essays = [f"/read/{i}/{s}" for i, s in rows[::step]]
            middle = session.get(Post, rows[len(rows) // 2][0])
            assert middle is not None
            month = middle.published_at.strftime("%Y/%m")
            tag = session.execute(
                select(Tag.slug).where(Tag.name == COMMON_TAG)  # type: ignore[call-overload]
            ).scalar()
            story = session.execute(
                select(Story.slug)  # type: ignore[call-overload]
                .join(PostStory, PostStory.story_id == Story.id)  # type: ignore[arg-type]
                .where(PostStory.post_id == middle.id)  # type: ignore[arg-type]
            ).scalar()
    finally:
        engine.dispose()

    popular = essays[len(essays) // 2]
    found = [
        Endpoint(
            "essay (random ids)", popular, random_essays_script(essays, workdir / "essays.lua")
        ),
        Endpoint("essay (one popular)", popular),
        Endpoint("/", "/"),
        Endpoint("/ next page", ""),
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
        Endpoint("/sitemap.xml", "/sitemap.xml"),
        Endpoint("GET /api/v1/posts", "/api/v1/posts"),
        Endpoint("GET /api/v1/posts next page", ""),
        Endpoint("essay 304 (If-None-Match)", popular, status=304),
        Endpoint("/ 304 (If-None-Match)", "/", status=304),
        Endpoint("/feed.xml 304 (If-None-Match)", "/feed.xml", status=304),
    ]
    with httpx.Client(base_url=base, timeout=60) as client:
        home = client.get("/")
        nxt = _link(home.text, "next")
        found[3].path, found[3].absent = (nxt, "") if nxt else ("/", "absent (no rel=next on /)")
        api = client.get("/api/v1/posts")
        api_next = _api_next(api)
        found[17].path = api_next or "/api/v1/posts"
        found[17].absent = "" if api_next else "absent (no next link in GET /api/v1/posts)"
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
        return str(answer.links["next"]["url"])
    try:
        doc = answer.json()
    except ValueError:
        return None
    for key in ("next", "next_url"):
        for holder in (doc, doc.get("links", {}) if isinstance(doc, dict) else {}):
            if isinstance(holder, dict) and isinstance(holder.get(key), str):
                return str(holder[key])
    return None
