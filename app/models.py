"""Database tables (SQLModel) and the API's input schema.

Tables are the source of truth for Alembic autogenerate; a test checks that the migrations in
`migrations/` produce exactly these tables.
"""

import re
import unicodedata
from datetime import UTC, datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlmodel import Field as SQLField
from sqlmodel import SQLModel

STATUS_PUBLISHED = "published"
STATUS_DELETED = "deleted"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores instants in UTC and always hands back aware datetimes (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: store only aware instants")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc_column(index: bool = False, nullable: bool = False) -> Any:
    return SQLField(sa_column=Column(UTCDateTime(), index=index, nullable=nullable))


class Post(SQLModel, table=True):
    __tablename__ = "posts"
    __table_args__ = (
        # Newest-first lists, feeds and keyset pagination: (status, published_at, id).
        Index("ix_posts_status_published", "status", "published_at", "id"),
        # Sitemaps read a few small columns of every post; from the table, each row's later
        # columns sit behind its body (SQLite overflow pages): 2.7 s for the index at 100,000.
        Index("ix_posts_sitemap", "status", "id", "updated_at", "published_at", "slug"),
    )

    id: int | None = SQLField(default=None, primary_key=True)
    slug: str = SQLField(max_length=200)
    title: str = SQLField(sa_column=Column(Text, nullable=False))
    body: str = SQLField(sa_column=Column(Text, nullable=False))
    body_html: str = SQLField(sa_column=Column(Text, nullable=False))
    excerpt: str = SQLField(sa_column=Column(Text, nullable=False))
    # The essay page's post-only HTML, rendered at write time (app/fragments.py); NULL or stale
    # (another build or site) means the page renders it live.
    page_html: str | None = SQLField(default=None, sa_column=Column(Text, nullable=True))
    author: str = SQLField(max_length=200)
    published_at: datetime = _utc_column(index=True)
    updated_at: datetime = _utc_column()
    cycle: int | None = SQLField(
        default=None, sa_column=Column(Integer, unique=True, nullable=True)
    )
    status: str = SQLField(default=STATUS_PUBLISHED, max_length=16)
    debate_outcome: str | None = SQLField(default=None, max_length=100)
    debate_conviction: float | None = None
    content_hash: str = SQLField(max_length=64)
    version: int = 1


class Mind(SQLModel, table=True):
    """One mind's confidence in one post's debate; rows so they can be queried and charted."""

    __tablename__ = "minds"
    __table_args__ = (
        UniqueConstraint("post_id", "position"),
        UniqueConstraint("post_id", "name"),
    )

    id: int | None = SQLField(default=None, primary_key=True)
    post_id: int = SQLField(
        sa_column=Column(Integer, ForeignKey("posts.id", ondelete="CASCADE"), nullable=False)
    )
    position: int
    name: str = SQLField(max_length=100, index=True)
    confidence: float


class Tag(SQLModel, table=True):
    __tablename__ = "tags"

    id: int | None = SQLField(default=None, primary_key=True)
    name: str = SQLField(max_length=100)
    slug: str = SQLField(max_length=120, unique=True)
    # When an edit last took an essay off this tag: its page and feed changed then, though no
    # essay it still lists did (the sitemap's lastmod and the feed's `updated` count it).
    left_at: datetime | None = SQLField(default=None, sa_column=Column(UTCDateTime()))


class PostTag(SQLModel, table=True):
    __tablename__ = "post_tags"
    __table_args__ = (
        # A tag's page lists newest first without sorting every post that carries the tag.
        Index("ix_post_tags_tag_published", "tag_id", "published_at", "post_id"),
    )

    post_id: int = SQLField(
        sa_column=Column(Integer, ForeignKey("posts.id", ondelete="CASCADE"), primary_key=True)
    )
    tag_id: int = SQLField(
        sa_column=Column(Integer, ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True)
    )
    position: int
    published_at: datetime = _utc_column()


class Story(SQLModel, table=True):
    __tablename__ = "stories"

    id: int | None = SQLField(default=None, primary_key=True)
    title: str = SQLField(max_length=300)
    slug: str = SQLField(max_length=120, unique=True)
    # As Tag.left_at.
    left_at: datetime | None = SQLField(default=None, sa_column=Column(UTCDateTime()))


class PostStory(SQLModel, table=True):
    """A story's status word at one post's cycle."""

    __tablename__ = "post_stories"
    __table_args__ = (
        Index("ix_post_stories_story_published", "story_id", "published_at", "post_id"),
    )

    post_id: int = SQLField(
        sa_column=Column(Integer, ForeignKey("posts.id", ondelete="CASCADE"), primary_key=True)
    )
    story_id: int = SQLField(
        sa_column=Column(Integer, ForeignKey("stories.id", ondelete="CASCADE"), primary_key=True)
    )
    position: int
    status: str = SQLField(max_length=100)
    published_at: datetime = _utc_column()


class Revision(SQLModel, table=True):
    """A post as it was before a change (JSON snapshot); nothing is lost by an edit or delete."""

    __tablename__ = "revisions"

    id: int | None = SQLField(default=None, primary_key=True)
    post_id: int = SQLField(
        sa_column=Column(
            Integer, ForeignKey("posts.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    version: int
    reason: str = SQLField(max_length=20)
    created_at: datetime = _utc_column()
    # Where the essay was in time, when the change moved it: the archive month it left then.
    published_at: datetime | None = SQLField(default=None, sa_column=Column(UTCDateTime()))
    snapshot: str = SQLField(sa_column=Column(Text, nullable=False))


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_tokens"
    __table_args__ = (
        # A name is taken only while its token is live: after a leak the operator revokes
        # `engine` and creates `engine` again, and the revoked row stays as the record.
        Index(
            "uq_api_tokens_live_name",
            "name",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    id: int | None = SQLField(default=None, primary_key=True)
    name: str = SQLField(max_length=100)
    token_hash: str = SQLField(max_length=64, unique=True)
    created_at: datetime = _utc_column()
    last_used_at: datetime | None = _utc_column(nullable=True)
    revoked_at: datetime | None = _utc_column(nullable=True)


class IdempotencyKey(SQLModel, table=True):
    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("scope", "key"),)

    id: int | None = SQLField(default=None, primary_key=True)
    scope: str = SQLField(max_length=100)
    key: str = SQLField(max_length=255)
    request_hash: str = SQLField(max_length=64)
    state: str = SQLField(max_length=16)
    response_status: int | None = None
    response_body: str | None = SQLField(default=None, sa_column=Column(Text, nullable=True))
    response_location: str | None = SQLField(default=None, max_length=500)
    created_at: datetime = _utc_column()
    # Who holds an in-flight claim (app/idempotency.py), so a retry can tell a request still
    # running from one whose worker was killed. None on claims made before migration 0011.
    owner: str | None = SQLField(default=None, max_length=128)


class AuthFailure(SQLModel, table=True):
    """Failed authentications per client and window, shared by every worker through the DB."""

    __tablename__ = "auth_failures"

    client: str = SQLField(max_length=100, primary_key=True)
    window_start: datetime = _utc_column()
    failures: int = 0


class EssayPage(SQLModel, table=True):
    """A published essay's page exactly as served, and gzipped, kept current by every write
    that changes it: its own, and its neighbours' (their titles and minds show on it). The page
    answers from here with one indexed read; a row from another build or site (`key`) or no
    row makes the page render live instead (app/essaypage.py). Only published posts have a
    row, with their current slug."""

    __tablename__ = "essay_pages"

    post_id: int = SQLField(
        sa_column=Column(Integer, ForeignKey("posts.id", ondelete="CASCADE"), primary_key=True)
    )
    # Small columns first (migration 0007): SQLite reads a row's columns in order.
    key: str = SQLField(max_length=40)  # `Renderer.page_key`: the build and site it is for
    slug: str = SQLField(max_length=200)  # the post's, as the page was stored
    etag: str = SQLField(max_length=64)
    gzip: bytes = SQLField(sa_column=Column(LargeBinary, nullable=False))  # smaller: first
    html: str = SQLField(sa_column=Column(Text, nullable=False))


class EssayPack(SQLModel, table=True):
    """SQLite: where a stored essay page's bytes also sit in a pack file beside the database
    (`app/pagepack.py`), with the page's key, slug and ETag again, so serving a page reads this
    small row and the bytes, not the `essay_pages` row's overflow pages. Written with the
    `essay_pages` row, in its transaction; no row: the page is read from `essay_pages`.
    PostgreSQL never uses the table."""

    __tablename__ = "essay_packs"

    post_id: int = SQLField(
        sa_column=Column(Integer, ForeignKey("posts.id", ondelete="CASCADE"), primary_key=True)
    )
    key: str = SQLField(max_length=40)
    slug: str = SQLField(max_length=200)
    etag: str = SQLField(max_length=64)
    pack: str = SQLField(max_length=64)  # the file's name in the pack folder
    at: int = SQLField(sa_column=Column(BigInteger, nullable=False))  # the page; its gzip after
    html_len: int
    gzip_len: int


class SiteState(SQLModel, table=True):
    """Small shared counters, e.g. the content version every write bumps (cache keys)."""

    __tablename__ = "site_state"

    name: str = SQLField(max_length=50, primary_key=True)
    value: int = 0


class VersionWatcher(SQLModel, table=True):
    """A worker that hears of every write through NOTIFY (PostgreSQL): its lease and the newest
    content version it holds. Writers wait for every live lease to catch up (app/watch.py)."""

    __tablename__ = "version_watchers"

    id: str = SQLField(max_length=200, primary_key=True)  # host:pid:random
    lease_until: datetime = _utc_column()  # in the database's clock
    seen_version: int = SQLField(sa_column=Column(BigInteger, nullable=False))


# --- API / import input -------------------------------------------------------------------------


# Unicode category Cc is exactly U+0000-U+001F and U+007F-U+009F, Cs is U+D800-U+DFFF: one
# regex scan instead of a Python loop per character (bodies are ~10 KB; this was 1 ms each).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_NO_NEWLINES = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _no_control_chars(value: str, field: str, allow_newlines: bool) -> str:
    found = (_CONTROL_NO_NEWLINES if allow_newlines else _CONTROL).search(value)
    if found is None:
        return value
    ch = found.group()
    if unicodedata.category(ch) == "Cs":
        raise ValueError(f"{field} contains an unpaired surrogate")
    raise ValueError(f"{field} contains a control character (U+{ord(ch):04X})")


def _clean_line(value: str, field: str) -> str:
    value = _no_control_chars(value, field, allow_newlines=False).strip()
    if not value:
        raise ValueError(f"{field} must not be empty")
    return value


class MindIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"example": {"name": "Macro", "confidence": 0.25}}
    )

    name: str = Field(min_length=1, max_length=100)
    confidence: float = Field(ge=0, le=1, allow_inf_nan=False)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _clean_line(value, "name")


class DebateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: str = Field(default="unknown", min_length=1, max_length=100)
    conviction: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    minds: list[MindIn] = Field(default_factory=list, max_length=50)

    @field_validator("outcome")
    @classmethod
    def _outcome(cls, value: str) -> str:
        return _clean_line(value, "outcome")

    @field_validator("minds")
    @classmethod
    def _unique_minds(cls, minds: list[MindIn]) -> list[MindIn]:
        seen: set[str] = set()
        for mind in minds:
            key = mind.name.casefold()
            if key in seen:
                raise ValueError(f"duplicate mind name: {mind.name!r}")
            seen.add(key)
        return minds


class StoryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=300)
    status: str = Field(default="developing", min_length=1, max_length=100)

    @field_validator("title", "status")
    @classmethod
    def _line(cls, value: str) -> str:
        return _clean_line(value, "story field")


class PostIn(BaseModel):
    """An essay as the engine (and the importer) submits it. Only title and body are required."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "title": "Breadth Is Thinning Under a Calm Index",
                "body": "The minds disagreed about *why* the index held up...",
                "cycle": 812,
                "published_at": "2026-04-05T15:04:00Z",
                "author": "Workshop",
                "debate": {
                    "outcome": "split",
                    "conviction": 0.42,
                    "minds": [
                        {"name": "Macro", "confidence": 0.35},
                        {"name": "Flow", "confidence": 0.6},
                        {"name": "Contrarian", "confidence": 0.3},
                    ],
                },
                "tags": ["QQQ", "breadth"],
                "stories": [{"title": "Narrow Leadership", "status": "developing"}],
            }
        },
    )

    title: str = Field(min_length=1, max_length=300)
    body: str = Field(min_length=1, max_length=200_000)
    cycle: int | None = Field(default=None, ge=0, le=2**31 - 1, strict=True)
    published_at: AwareDatetime | None = None
    author: str | None = Field(default=None, min_length=1, max_length=200)
    debate: DebateIn | None = None
    tags: list[str] = Field(default_factory=list, max_length=30)
    stories: list[StoryIn] = Field(default_factory=list, max_length=30)

    @field_validator("title")
    @classmethod
    def _title(cls, value: str) -> str:
        return _clean_line(value, "title")

    @field_validator("author")
    @classmethod
    def _author(cls, value: str | None) -> str | None:
        return None if value is None else _clean_line(value, "author")

    @field_validator("body")
    @classmethod
    def _body(cls, value: str) -> str:
        value = (
            _no_control_chars(value, "body", allow_newlines=True).replace("\r\n", "\n").strip("\n")
        )
        if not value.strip():
            raise ValueError("body must not be empty")
        return value

    @field_validator("published_at", mode="before")
    @classmethod
    def _not_a_number(cls, value: Any) -> Any:
        # pydantic reads a number as Unix seconds *or* milliseconds, guessing by its size; the
        # schema says an RFC 3339 string, so a number is refused rather than silently misdated.
        if isinstance(value, int | float):
            raise ValueError("published_at must be an RFC 3339 string such as 2026-04-03T17:51:27Z")
        return value

    @field_validator("published_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        try:
            value = value.astimezone(UTC)
        except OverflowError:  # e.g. 9999-12-31T23:59:59-23:59 is past the year 9999 in UTC
            raise ValueError("published_at must be between 1970 and 9998") from None
        if not 1970 <= value.year <= 9998:
            raise ValueError("published_at must be between 1970 and 9998")
        # Store to the second: the export format (and most feeds) carry no fractions.
        return value.replace(microsecond=0)

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        from app.slugs import slugify

        out: list[str] = []
        seen: set[str] = set()
        for tag in tags:
            tag = _clean_line(tag, "tag")
            if len(tag) > 100:
                raise ValueError("a tag is at most 100 characters")
            key = slugify(tag, fallback="")
            if not key:
                raise ValueError(f"tag {tag!r} has no letters or digits")
            if key not in seen:
                seen.add(key)
                out.append(tag)
        return out

    @field_validator("stories")
    @classmethod
    def _unique_stories(cls, stories: list[StoryIn]) -> list[StoryIn]:
        from app.slugs import slugify

        seen: set[str] = set()
        for story in stories:
            key = slugify(story.title, fallback="")
            if not key:
                raise ValueError(f"story {story.title!r} has no letters or digits")
            if key in seen:
                raise ValueError(f"duplicate story: {story.title!r}")
            seen.add(key)
        return stories
