"""Feed documents: RSS 2.0, Atom 1.0 and JSON Feed 1.1 for the site, a tag or a story.

Rendering is a pure function of the database content (hence of the content version) and the
request path, so a response cache may key on exactly that pair.

Ids: the RSS guid is the permalink `/read/{id}/{slug}` (`isPermaLink="true"`), as subscribers'
readers and the old blog expect. Atom ids and JSON Feed ids must never change (RFC 4287 4.2.6),
and a slug follows its title, so those use the short permalink `/read/{id}`, which 301s to the
canonical page.
"""

import html
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import lxml.html
from feedgen.feed import FeedGenerator
from lxml import etree
from sqlalchemy import func, select
from sqlmodel import Session

from app import posts, urls
from app.config import Settings
from app.errors import FeedNotFound
from app.models import STATUS_DELETED, STATUS_PUBLISHED, Post, PostStory, PostTag, Story, Tag
from app.slugs import is_slug

ATOM_NS = "http://www.w3.org/2005/Atom"
JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"
LANGUAGE = "en"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# XML 1.0 `Char` production: everything else (most C0 controls, lone surrogates, U+FFFE/FFFF)
# makes a document ill-formed, and lxml refuses it outright.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class FeedFormat(StrEnum):
    RSS = "rss"
    ATOM = "atom"
    JSON = "json"


MEDIA_TYPES = {
    FeedFormat.RSS: "application/rss+xml; charset=utf-8",
    FeedFormat.ATOM: "application/atom+xml; charset=utf-8",
    FeedFormat.JSON: "application/feed+json; charset=utf-8",
}
FILE_NAMES = {FeedFormat.RSS: "feed.xml", FeedFormat.ATOM: "atom.xml", FeedFormat.JSON: "feed.json"}


@dataclass(frozen=True)
class Scope:
    """Which essays a feed lists: the whole site, one tag or one story."""

    kind: str  # "site" | "tag" | "story"
    slug: str = ""
    name: str = ""
    row_id: int = 0
    left_at: datetime | None = None  # when an edit last took an essay off the tag or story

    @property
    def page_path(self) -> str:
        if self.kind == "tag":
            return urls.tag_path(self.slug)
        if self.kind == "story":
            return urls.story_path(self.slug)
        return "/"

    def feed_path(self, fmt: FeedFormat) -> str:
        base = "" if self.kind == "site" else self.page_path
        return f"{base}/{FILE_NAMES[fmt]}"

    def title(self, settings: Settings) -> str:
        if self.kind == "tag":
            return f"{settings.site_name}: essays tagged {self.name}"
        if self.kind == "story":
            return f"{settings.site_name}: the story “{self.name}”"
        return settings.site_name


SITE = Scope("site")


def feed_urls(settings: Settings, scope: Scope) -> list[str]:
    return [urls.absolute(settings, scope.feed_path(fmt)) for fmt in FeedFormat]


def resolve_scope(session: Session, kind: str, slug: str) -> Scope:
    """The tag or story named by `slug`; FeedNotFound when there is none."""
    if not is_slug(slug):
        raise FeedNotFound(f"no {kind} {slug[:80]!r}")
    if kind == "tag":
        tag = session.execute(select(Tag).where(Tag.slug == slug)).scalars().first()  # type: ignore[arg-type]
        if tag is not None:
            return Scope("tag", tag.slug, tag.name, tag.id or 0, tag.left_at)
    elif kind == "story":
        story = session.execute(select(Story).where(Story.slug == slug)).scalars().first()  # type: ignore[arg-type]
        if story is not None:
            return Scope("story", story.slug, story.title, story.id or 0, story.left_at)
    raise FeedNotFound(f"no {kind} {slug!r}")


def newest(session: Session, scope: Scope, limit: int) -> list[posts.PostView]:
    """The newest published essays in `scope`, walking the (id, published_at, post_id) index."""
    if scope.kind == "site":
        return posts.load_views(session, posts.list_published(session, limit))
    link, owner = _link_of(scope)
    query = (
        select(Post)
        .join(link, link.post_id == Post.id)  # type: ignore[arg-type]
        .where(owner == scope.row_id, Post.status == STATUS_PUBLISHED)  # type: ignore[arg-type]
        .order_by(link.published_at.desc(), link.post_id.desc())  # type: ignore[attr-defined]
        .limit(limit)
    )
    return posts.load_views(session, list(session.execute(query).scalars()))


# --- text and HTML ----------------------------------------------------------------------------


def xml_text(text: str) -> str:
    return _NOT_XML_CHAR.sub("", text)


def absolute_html(fragment: str, base_url: str) -> str:
    """`fragment` with every link and image URL made absolute against `base_url` (a feed reader
    has no page to resolve `/read/...`, `../x.png` or `#fn1` against)."""
    if not fragment.strip():
        return ""
    root = lxml.html.fragment_fromstring(fragment, create_parent="div")
    root.make_links_absolute(base_url, resolve_base_href=False)
    parts = [html.escape(root.text or "", quote=False)]
    parts += [lxml.html.tostring(child, encoding="unicode") for child in root]
    return "".join(parts)


def debate_html(view: posts.PostView) -> str:
    """The debate as one readable line, the way the blog prints it under each essay."""
    p = view.post
    lines: list[str] = []
    if p.debate_outcome is not None:
        parts = [f"Debate: {p.debate_outcome}"]
        if p.debate_conviction is not None:
            parts.append(f"Conviction: {round(p.debate_conviction * 100)}%")
        parts += [f"{m.name}: {round(m.confidence * 100)}%" for m in view.minds]
        lines.append(" | ".join(parts))
    if view.stories:
        lines.append("Stories: " + "; ".join(f"{s.title} ({status})" for s, status in view.stories))
    if not lines:
        return ""
    body = "<br>".join(f"<em>{html.escape(line)}</em>" for line in lines)
    return f'<hr><p class="debate">{body}</p>'


def content_html(settings: Settings, view: posts.PostView) -> str:
    base = urls.permalink(settings, view.post)
    return xml_text(absolute_html(view.post.body_html, base) + debate_html(view))


# --- documents --------------------------------------------------------------------------------


@dataclass
class _Entry:
    view: posts.PostView
    id: str
    url: str
    title: str
    author: str
    summary: str
    content: str


def _entries(settings: Settings, views: list[posts.PostView]) -> list[_Entry]:
    return [
        _Entry(
            view=v,
            id=urls.absolute(settings, f"/read/{v.post.id}"),
            url=urls.permalink(settings, v.post),
            title=xml_text(v.post.title),
            author=xml_text(v.post.author),
            summary=xml_text(v.post.excerpt),
            content=content_html(settings, v),
        )
        for v in views
    ]


def _updated(views: list[posts.PostView], withdrawn: datetime | None) -> datetime:
    """The feed's own change time: its newest entry's, or later, when an essay left it."""
    return max(
        [v.post.updated_at for v in views] + ([withdrawn] if withdrawn else []), default=_EPOCH
    )


def last_withdrawn(session: Session, scope: Scope) -> datetime | None:
    """When an essay last left `scope` (a deleted post's `updated_at`, or an edit that took it
    off the tag or story): the feed changed then, though every entry it still lists is older."""
    query = select(func.max(Post.updated_at)).where(Post.status == STATUS_DELETED)  # type: ignore[arg-type]
    if scope.kind != "site":
        # From the deleted essays (few, by the status index) to the scope's links, never from
        # the links: a common tag has tens of thousands, each a read of its essay's row (SQLite
        # chose that way round for a join: 240 ms a render at 100,000 essays).
        link, owner = _link_of(scope)
        linked = select(link.post_id).where(link.post_id == Post.id, owner == scope.row_id)  # type: ignore[call-overload]
        query = query.where(linked.exists())
    deleted = session.execute(query).scalar()
    return max((t for t in (deleted, scope.left_at) if t is not None), default=None)


def _link_of(scope: Scope) -> tuple[type[PostTag] | type[PostStory], Any]:
    """The table linking essays to a tag's or story's scope, and its column naming the scope."""
    if scope.kind == "tag":
        return PostTag, PostTag.tag_id
    return PostStory, PostStory.story_id


class _HubLinks:
    """feedgen writes only one atom:link (rel=self) into RSS; this extension adds rel=hub."""

    hubs: list[str] = []

    def extend_ns(self) -> dict[str, str]:
        return {"atom": ATOM_NS}

    def extend_rss(self, rss: Any) -> Any:
        channel = rss.find("channel")
        for hub in self.hubs:
            etree.SubElement(channel, f"{{{ATOM_NS}}}link", href=hub, rel="hub")
        return rss

    def extend_atom(self, feed: Any) -> Any:
        return feed


class _NoFeedExtension:
    def extend_ns(self) -> dict[str, str]:
        return {}

    def extend_atom(self, feed: Any) -> Any:
        return feed


class _AtomEntryFixes(_NoFeedExtension):
    """Finishing touches feedgen cannot express on Atom entries.

    - feedgen 1.0 drops rel and type from entry links (it reads them from the element it just
      created instead of from the link); put them back, since readers and RFC 4287 checkers
      look for rel="alternate".
    - The title is declared type="html" and HTML-escaped, like the summary (already escaped for
      RSS, where description is HTML): a title that reads like markup ("</script>", "a <b> c")
      is then unambiguous text in every reader, and the W3C validator has nothing to warn about.
    """

    def extend_rss(self, item: Any) -> Any:
        return item

    def extend_atom(self, entry: Any) -> Any:
        # feedgen builds Atom elements without a namespace (xmlns is set as a plain attribute).
        for link in entry.iterfind("link"):
            if link.get("rel") is None:
                link.set("rel", "alternate")
                link.set("type", "text/html")
        title = entry.find("title")
        title.text = html.escape(title.text, quote=False)
        title.set("type", "html")
        summary = entry.find("summary")
        if summary is not None:
            summary.set("type", "html")
        return entry


def _generator(
    settings: Settings,
    scope: Scope,
    fmt: FeedFormat,
    views: list[posts.PostView],
    withdrawn: datetime | None,
) -> FeedGenerator:
    fg = FeedGenerator()
    fg.load_extension("dc", atom=False, rss=True)
    fg.register_extension("fixes", _NoFeedExtension, _AtomEntryFixes, atom=True, rss=False)
    page = urls.absolute(settings, scope.page_path)
    fg.id(page)
    fg.title(xml_text(scope.title(settings)))
    fg.subtitle(xml_text(settings.site_description))  # also the RSS channel description
    fg.author({"name": xml_text(settings.author)})
    fg.language(LANGUAGE)
    fg.generator("Workshop", uri=urls.absolute(settings, "/"))
    fg.docs("https://www.rssboard.org/rss-specification")
    fg.updated(_updated(views, withdrawn))
    fg.lastBuildDate(_updated(views, withdrawn))
    self_url = urls.absolute(settings, scope.feed_path(fmt))
    fg.link(href=self_url, rel="self", type=MEDIA_TYPES[fmt].split(";")[0])
    hubs = [settings.websub_hub] if settings.websub_hub else []
    if fmt is FeedFormat.ATOM:
        for hub in hubs:
            fg.link(href=hub, rel="hub")
    else:
        fg.register_extension("websub", _HubLinks, None, atom=False, rss=True)
        fg.websub.hubs = hubs
    # Last, because feedgen takes the RSS channel <link> from the last link added.
    fg.link(href=page, rel="alternate", type="text/html")

    # feedgen prepends each new entry, so add oldest first to keep the document newest first.
    for entry in reversed(_entries(settings, views)):
        fe = fg.add_entry()
        # feedgen keeps one id for both formats, and the document is built per format.
        if fmt is FeedFormat.RSS:
            fe.guid(entry.url, permalink=True)
        else:
            fe.id(entry.id)
        fe.title(entry.title)
        fe.link(href=entry.url, rel="alternate", type="text/html")
        fe.author({"name": entry.author})
        fe.dc.dc_creator(entry.author)
        fe.published(entry.view.post.published_at)
        fe.pubDate(entry.view.post.published_at)
        fe.updated(entry.view.post.updated_at)
        # Plain text, escaped once more because RSS description and this Atom summary are HTML.
        fe.description(html.escape(entry.summary, quote=False), isSummary=True)
        # Escaped text rather than CDATA: a CDATA section cannot hold "]]>", escaped text can
        # hold anything, and every reader unescapes both the same way.
        fe.content(entry.content, type="html")
        for tag in entry.view.tags:
            fe.category(term=xml_text(tag.name))
    return fg


def render(
    settings: Settings,
    scope: Scope,
    fmt: FeedFormat,
    views: list[posts.PostView],
    withdrawn: datetime | None = None,
) -> bytes:
    """The feed document listing `views`; `withdrawn`: when an essay last left it (deleted)."""
    if fmt is FeedFormat.JSON:
        return _json_feed(settings, scope, views)
    fg = _generator(settings, scope, fmt, views, withdrawn)
    if fmt is FeedFormat.ATOM:
        return bytes(fg.atom_str(pretty=True))
    return _rss_profile_text(bytes(fg.rss_str(pretty=True)))


# RSS 2.0 never said whether title and the like may hold HTML, so aggregators guess; the RSS
# Advisory Board profile's answer (which the W3C validator checks) is to write "&", "<" and ">"
# in plain-text elements as hexadecimal character references. lxml always writes &amp; &lt; &gt;,
# so swap them inside those elements, which hold nothing but escaped text.
_PLAIN_TEXT = re.compile(rb"(<(title|category|dc:creator)>)(.*?)(</\2>)", re.DOTALL)
_HEX_REFS = {b"&amp;": b"&#x26;", b"&lt;": b"&#x3C;", b"&gt;": b"&#x3E;"}
_NAMED_REF = re.compile(rb"&(?:amp|lt|gt);")


def _rss_profile_text(document: bytes) -> bytes:
    def hexify(match: re.Match[bytes]) -> bytes:
        text = _NAMED_REF.sub(lambda m: _HEX_REFS[m.group(0)], match.group(3))
        return match.group(1) + text + match.group(4)

    return _PLAIN_TEXT.sub(hexify, document)


def render_feed(session: Session, settings: Settings, scope: Scope, fmt: FeedFormat) -> bytes:
    views = newest(session, scope, settings.feed_size)
    return render(settings, scope, fmt, views, last_withdrawn(session, scope))


def _json_feed(settings: Settings, scope: Scope, views: list[posts.PostView]) -> bytes:
    doc: dict[str, Any] = {
        "version": JSON_FEED_VERSION,
        "title": xml_text(scope.title(settings)),
        "home_page_url": urls.absolute(settings, scope.page_path),
        "feed_url": urls.absolute(settings, scope.feed_path(FeedFormat.JSON)),
        "description": xml_text(settings.site_description),
        "language": LANGUAGE,
        "authors": [{"name": xml_text(settings.author)}],
    }
    if settings.websub_hub:
        doc["hubs"] = [{"type": "WebSub", "url": settings.websub_hub}]
    doc["items"] = [
        {
            "id": e.id,
            "url": e.url,
            "title": e.title,
            "content_html": e.content,
            "summary": e.summary,
            "date_published": e.view.post.published_at.isoformat(),
            "date_modified": e.view.post.updated_at.isoformat(),
            "authors": [{"name": e.author}],
            "tags": [xml_text(t.name) for t in e.view.tags],
            "language": LANGUAGE,
        }
        for e in _entries(settings, views)
    ]
    return json.dumps(doc, ensure_ascii=False, indent=1).encode()
