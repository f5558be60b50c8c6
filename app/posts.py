"""The post service: create, update, delete, restore and query essays.

Used by the ingest API, the reader pages, the feeds and the CLI alike; every write commits here.
"""

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import case, delete, func, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from app import beacon, essaypage, etags, events
from app.errors import (
    CycleConflict,
    IdTaken,
    PostGone,
    PostNotFound,
    PreconditionFailed,
    RevisionNotFound,
)
from app.fragments import Render, Renderer
from app.models import (
    STATUS_DELETED,
    STATUS_PUBLISHED,
    Mind,
    Post,
    PostIn,
    PostStory,
    PostTag,
    Revision,
    SiteState,
    Story,
    Tag,
    utcnow,
)
from app.render import render_with_excerpt
from app.slugs import slugify

CONTENT_VERSION = "content_version"
# Seconds since CHANGED_AT_EPOCH of the last write (site_state.value is a 32-bit integer on
# PostgreSQL, so Unix seconds would overflow in 2038; this epoch lasts until 2088).
CONTENT_CHANGED_AT = "content_changed_at"
CHANGED_AT_EPOCH = 1_577_836_800  # 2020-01-01T00:00:00Z


Prepared = tuple[str, str]  # (body_html, excerpt): the Markdown work of one post


@dataclass
class SaveResult:
    post: Post
    created: bool = False
    changed: bool = False


@dataclass
class Batch:
    """Writes made in one transaction (`workshop import`), each in a savepoint of its own
    (`item`): the essay pages they touch, the content version and the commit are done once, by
    `commit_batch`, not once for each write. Nothing of the batch is stored before that commit.
    A write that fails undoes only itself."""

    render: Render | None
    known: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)  # tag, story ids
    changed: set[int] = field(default_factory=set)  # posts created, edited or deleted
    before: set[int] = field(default_factory=set)  # their neighbours before the edits

    @contextlib.contextmanager
    def item(self, session: Session) -> Iterator[None]:
        """One write of the batch: on an exception it is undone (its savepoint rolled back, and
        the tags, stories and posts it noted forgotten) and the exception goes on."""
        known, changed, before = dict(self.known), set(self.changed), set(self.before)
        savepoint = session.begin_nested()
        try:
            yield
        except BaseException:
            savepoint.rollback()
            self.known, self.changed, self.before = known, changed, before
            raise
        savepoint.commit()


def commit_batch(session: Session, batch: Batch) -> None:
    """Store the pages the batch's writes touched, bump the content version once and commit;
    then tell the subscribers of each post written (as each write would have)."""
    if batch.changed:
        _refresh_pages(session, batch.render, batch.changed, batch.before)
        _bump_content_version(session)
    session.commit()
    for post_id in sorted(batch.changed):
        events.content_changed(session, post_id)


@dataclass
class PostView:
    """A post with its debate minds, tags and stories, loaded without N+1 queries."""

    post: Post
    minds: list[Mind] = field(default_factory=list)
    tags: list[Tag] = field(default_factory=list)
    stories: list[tuple[Story, str]] = field(default_factory=list)

    def to_input(self) -> PostIn:
        """The post as an input document: what export writes and a revision snapshot keeps."""
        p = self.post
        debate = None
        if p.debate_outcome is not None:
            debate = {
                "outcome": p.debate_outcome,
                "conviction": p.debate_conviction,
                "minds": [{"name": m.name, "confidence": m.confidence} for m in self.minds],
            }
        return PostIn.model_validate(
            {
                "title": p.title,
                "body": p.body,
                "cycle": p.cycle,
                "published_at": p.published_at,
                "author": p.author,
                "debate": debate,
                "tags": [t.name for t in self.tags],
                "stories": [{"title": s.title, "status": status} for s, status in self.stories],
            }
        )


def etag(post: Post) -> str:
    return f'"p{post.id}v{post.version}"'


def content_hash(data: PostIn, default_author: str) -> str:
    """Hash of everything a retry must repeat; published_at is compared separately, because a
    request that leaves it out (defaulting to now) must still match its own retry."""
    doc = data.model_dump(mode="json", exclude={"published_at"})
    doc["author"] = data.author or default_author
    raw = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


def _matches(post: Post, data: PostIn, digest: str) -> bool:
    return post.content_hash == digest and (
        data.published_at is None or data.published_at == post.published_at
    )


def same_content(post: Post, data: PostIn, default_author: str) -> bool:
    """Whether `post` already holds `data`, whatever its status (a re-import changes nothing)."""
    return _matches(post, data, content_hash(data, default_author))


# --- writes ---------------------------------------------------------------------------------------


# Called with the session and the written post just before the write commits, so a caller can
# record something in the same transaction (the ingest API stores its Idempotency-Key answer
# this way: the post and the key's answer are committed together or not at all).
BeforeCommit = Callable[[Session, Post], None]


def create_post(
    session: Session,
    data: PostIn,
    default_author: str,
    *,
    post_id: int | None = None,
    before_commit: BeforeCommit | None = None,
    render: Render | None = None,
    batch: Batch | None = None,
    prepared: Prepared | None = None,
) -> SaveResult:
    """Create a post, or return the existing one when this is a retry of the same cycle.

    The same cycle with other content raises CycleConflict; a concurrent duplicate that wins
    the race is caught by the unique index on cycle and answered like a retry. In a `batch`
    nothing is committed here (see `Batch`; its `render` is used). `prepared`: its Markdown,
    rendered beforehand (`prepare`).
    """
    # Markdown is rendered before the first statement opens the transaction, so a slow render
    # never holds SQLite's write lock (or a PostgreSQL row lock) while other writers wait.
    prepared = prepared or render_with_excerpt(data.body)
    digest = content_hash(data, default_author)
    serialize_writers(session)
    if data.cycle is not None:
        existing = _by_cycle(session, data.cycle)
        if existing is not None:
            return _retry_or_conflict(existing, data, digest)
    if post_id is not None and session.get(Post, post_id) is not None:
        raise IdTaken(f"post id {post_id} already exists", post_id=post_id)

    now = utcnow()
    post = Post(  # type: ignore[call-arg]
        id=post_id,
        published_at=data.published_at or now.replace(microsecond=0),
        updated_at=now,
        content_hash=digest,
    )
    if batch is not None:
        assert before_commit is None, "a batch commits once, for all its writes"
        render = batch.render
    try:
        known = batch.known if batch is not None else None
        _apply(session, post, data, default_author, render, fresh=True, known=known, done=prepared)
        if post_id is not None:
            _advance_id_sequence(session)
        created_id = cast(int, post.id)
        if batch is not None:
            batch.changed.add(created_id)
            return SaveResult(post, created=True, changed=True)
        _refresh_pages(session, render, {created_id})
        if before_commit is not None:
            before_commit(session, post)
        _bump_content_version(session)
        session.commit()
        events.content_changed(session, created_id)
    except IntegrityError:
        if batch is not None:  # its savepoint is undone by `Batch.item`; the batch goes on
            raise
        session.rollback()
        existing = _by_cycle(session, data.cycle) if data.cycle is not None else None
        if existing is None:
            if post_id is not None and session.get(Post, post_id) is not None:
                raise IdTaken(f"post id {post_id} already exists", post_id=post_id) from None
            raise
        return _retry_or_conflict(existing, data, digest)
    session.refresh(post)
    return SaveResult(post, created=True, changed=True)


def prepare(items: list[PostIn]) -> list[Prepared]:
    """The CPU-heavy part of writing posts, with no database: bulk loads run it in worker
    processes (or before taking SQLite's write lock) and hand the result to `create_many`."""
    return [render_with_excerpt(data.body) for data in items]


def create_many(
    session: Session,
    items: list[PostIn],
    default_author: str,
    render: Render | None = None,
    prepared: list[Prepared] | None = None,
) -> int:
    """Create fresh posts in one transaction (bulk loads: the benchmark, big imports).

    The same `_apply` as `create_post`, without its retry handling: a cycle that already
    exists fails the whole batch with IntegrityError, and nothing of it is stored.
    """
    now = utcnow()
    batch = Batch(render)  # its tag and story ids, its posts, and its commit (no savepoints)
    # Markdown first, before the first statement begins the transaction (and on SQLite takes
    # the write lock), so concurrent bulk writers only queue for the database part.
    if prepared is None or len(prepared) != len(items):
        prepared = prepare(items)
    serialize_writers(session)
    for data, done in zip(items, prepared, strict=True):
        post = Post(  # type: ignore[call-arg]
            published_at=data.published_at or now.replace(microsecond=0),
            updated_at=now,
            content_hash=content_hash(data, default_author),
        )
        _apply(
            session, post, data, default_author, render, fresh=True, known=batch.known, done=done
        )
        batch.changed.add(post.id)  # type: ignore[arg-type]
    commit_batch(session, batch)
    return len(items)


def update_post(
    session: Session,
    post_id: int,
    data: PostIn,
    default_author: str,
    *,
    if_match: str | None = None,
    reason: Literal["update", "restore", "import"] = "update",
    before_commit: BeforeCommit | None = None,
    render: Render | None = None,
    batch: Batch | None = None,
    prepared: Prepared | None = None,
) -> SaveResult:
    """Replace a post's content, keeping the previous version as a revision.

    An omitted published_at keeps the current one. An identical replacement changes nothing.
    A deleted post is published again (that is how a revision is restored after a delete).
    In a `batch` nothing is committed here (see `Batch`; its `render` is used). `prepared`: its
    Markdown, rendered beforehand (`prepare`).
    """
    prepared = prepared or render_with_excerpt(data.body)  # outside the lock, as in create_post
    if batch is not None:
        assert before_commit is None, "a batch commits once, for all its writes"
        render = batch.render
    serialize_writers(session)
    post = _locked_post(session, post_id, in_batch=batch is not None)
    _check_if_match(post, if_match)
    if data.published_at is None:
        data = data.model_copy(update={"published_at": post.published_at})
    digest = content_hash(data, default_author)
    if _matches(post, data, digest) and post.status == STATUS_PUBLISHED:
        if batch is None:
            session.rollback()
        return SaveResult(post)
    if data.cycle is not None and data.cycle != post.cycle:
        other = _by_cycle(session, data.cycle)
        if other is not None:
            raise CycleConflict(
                f"cycle {data.cycle} already belongs to post {other.id}", post_id=other.id
            )
    around_before = essaypage.neighbours(session, {post_id})  # before the edit moves or renames it
    _snapshot(session, post, reason, moved=data.published_at != post.published_at)
    post.status = STATUS_PUBLISHED
    post.content_hash = digest
    post.version += 1
    post.updated_at = utcnow()
    known = batch.known if batch is not None else None
    _apply(session, post, data, default_author, render, known=known, done=prepared)
    if batch is not None:
        batch.changed.add(post_id)
        batch.before |= around_before
        return SaveResult(post, changed=True)
    _refresh_pages(session, render, {post_id}, around_before)
    return _commit_change(session, post, before_commit)


def delete_post(
    session: Session,
    post_id: int,
    *,
    if_match: str | None = None,
    before_commit: BeforeCommit | None = None,
    render: Render | None = None,
    batch: Batch | None = None,
    deleted_at: datetime | None = None,
) -> SaveResult:
    """Unpublish: the page answers 410 and the post leaves lists and feeds; nothing is erased.

    `deleted_at`: when it was withdrawn, if not now (an import keeps the exported time, which is
    the deleted post's `updated_at`). In a `batch` nothing is committed here (see `Batch`)."""
    serialize_writers(session)
    post = _locked_post(session, post_id, in_batch=batch is not None)
    _check_if_match(post, if_match)
    if post.status == STATUS_DELETED:
        if batch is None:
            session.rollback()
        return SaveResult(post)
    if batch is not None:
        assert before_commit is None, "a batch commits once, for all its writes"
    _snapshot(session, post, "delete")
    post.status = STATUS_DELETED
    post.version += 1
    post.updated_at = deleted_at or utcnow()
    session.add(post)
    session.flush()
    if batch is not None:
        batch.changed.add(post_id)
        return SaveResult(post, changed=True)
    _refresh_pages(session, render, {post_id})  # its neighbours now link past it
    return _commit_change(session, post, before_commit)


def _refresh_pages(
    session: Session, render: Render | None, changed: set[int], before: set[int] | None = None
) -> None:
    """Keep `essay_pages` true after a write, in its transaction: the changed posts' pages and
    those of their neighbours (`before` the write and after it) show their titles and minds.
    Without a renderer, those stored pages are dropped (they render live until rewritten), so
    a write can never leave a stale page behind."""
    affected = changed | (before or set()) | essaypage.neighbours(session, changed)
    if isinstance(render, Renderer):
        essaypage.store_pages(session, render, affected)
    else:
        essaypage.drop_pages(session, affected)


def _commit_change(session: Session, post: Post, before_commit: BeforeCommit | None) -> SaveResult:
    """Commit an edit of an existing post: the caller's hook, the content version, then notify."""
    if before_commit is not None:
        before_commit(session, post)
    _bump_content_version(session)
    session.commit()
    events.content_changed(session, post.id)  # type: ignore[arg-type]
    session.refresh(post)
    return SaveResult(post, changed=True)


def restore_revision(
    session: Session,
    post_id: int,
    revision_id: int,
    default_author: str,
    render: Render | None = None,
) -> SaveResult:
    revision = session.get(Revision, revision_id)
    if revision is None or revision.post_id != post_id:
        raise RevisionNotFound(f"post {post_id} has no revision {revision_id}")
    snapshot = json.loads(revision.snapshot)
    data = PostIn.model_validate(snapshot["input"])
    return update_post(session, post_id, data, default_author, reason="restore", render=render)


def _by_cycle(session: Session, cycle: int) -> Post | None:
    return session.exec(select(Post).where(col(Post.cycle) == cycle)).scalars().first()  # type: ignore[call-overload]


def _retry_or_conflict(existing: Post, data: PostIn, digest: str) -> SaveResult:
    if existing.status == STATUS_PUBLISHED and _matches(existing, data, digest):
        return SaveResult(existing)
    state = "a deleted" if existing.status == STATUS_DELETED else "another"
    raise CycleConflict(
        f"cycle {data.cycle} already has {state} essay: post {existing.id}",
        post_id=existing.id,
    )


def _locked_post(session: Session, post_id: int, in_batch: bool = False) -> Post:
    # FOR UPDATE on PostgreSQL serialises concurrent edits of one post (If-Match stays honest);
    # SQLite write sessions already hold the database lock.
    post = (
        session.exec(select(Post).where(col(Post.id) == post_id).with_for_update())  # type: ignore[call-overload]
        .scalars()
        .first()
    )
    if post is None:
        if not in_batch:  # a batch's write is undone by its savepoint (`Batch.item`)
            session.rollback()
        raise PostNotFound(f"no post with id {post_id}")
    return post


def _check_if_match(post: Post, if_match: str | None) -> None:
    if if_match is None:
        return
    # Any tag of the current version matches: the gzipped answer's own tag, and a weak tag as
    # its strong twin (a compressing proxy in front, nginx's gzip, weakens the ETag the engine
    # then sends back); the post's version is the same either way (app/etags.py).
    if not etags.matches(if_match, etag(post)):
        raise PreconditionFailed(
            f"If-Match {if_match} does not match the current ETag {etag(post)}", etag=etag(post)
        )


def _snapshot(session: Session, post: Post, reason: str, moved: bool = False) -> None:
    """Keep `post` as it is now as a revision; `moved`: the change gives it another publish
    time (the revision then says where it was: the archive month it may leave, `sitemap`)."""
    view = load_views(session, [post])[0]
    snapshot = {
        "id": post.id,
        "slug": post.slug,
        "status": post.status,
        "version": post.version,
        "updated_at": post.updated_at.isoformat(),
        "input": view.to_input().model_dump(mode="json"),
    }
    session.add(
        Revision(
            post_id=post.id,  # type: ignore[arg-type]
            version=post.version,
            reason=reason,
            created_at=utcnow(),
            published_at=post.published_at if moved else None,
            snapshot=json.dumps(snapshot, ensure_ascii=False),
        )
    )


def _apply(
    session: Session,
    post: Post,
    data: PostIn,
    default_author: str,
    render: Render | None = None,
    *,
    fresh: bool = False,
    known: dict[tuple[str, str], tuple[int, str]] | None = None,
    done: Prepared | None = None,
) -> None:
    """Write every field of `data` onto `post` and replace its minds, tags and stories; with
    `render`, store the essay page's post-only HTML too (else NULL: the page renders it live).
    A `fresh` post has no rows to replace; `known` remembers tag and story ids across a batch."""
    post.title = data.title
    post.slug = slugify(data.title)
    post.body = data.body
    post.body_html, post.excerpt = done or render_with_excerpt(data.body)
    post.author = data.author or default_author
    if data.published_at is not None:
        post.published_at = data.published_at
    post.cycle = data.cycle
    post.debate_outcome = data.debate.outcome if data.debate else None
    post.debate_conviction = data.debate.conviction if data.debate else None
    session.add(post)
    session.flush()
    assert post.id is not None

    tags_before, stories_before = (set(), set()) if fresh else _linked_groups(session, post.id)
    for table in () if fresh else (Mind, PostTag, PostStory):
        session.execute(delete(table).where(col(table.post_id) == post.id))
    view = PostView(post)
    for position, mind in enumerate(data.debate.minds if data.debate else []):
        view.minds.append(
            Mind(post_id=post.id, position=position, name=mind.name, confidence=mind.confidence)
        )
    session.add_all(view.minds)
    for position, name in enumerate(data.tags):
        slug = slugify(name)
        tag_id, stored_name = _get_or_create(session, Tag, slug, {"name": name}, known)
        view.tags.append(Tag(id=tag_id, slug=slug, name=stored_name))
        session.add(
            PostTag(
                post_id=post.id, tag_id=tag_id, position=position, published_at=post.published_at
            )
        )
    for position, story in enumerate(data.stories):
        slug = slugify(story.title)
        story_id, title = _get_or_create(session, Story, slug, {"title": story.title}, known)
        view.stories.append((Story(id=story_id, slug=slug, title=title), story.status))
        session.add(
            PostStory(
                post_id=post.id,
                story_id=story_id,
                position=position,
                status=story.status,
                published_at=post.published_at,
            )
        )
    _note_left(session, Tag, tags_before - {t.id for t in view.tags}, post.updated_at)
    _note_left(session, Story, stories_before - {s.id for s, _ in view.stories}, post.updated_at)
    post.page_html = render(view) if render is not None else None
    session.flush()


def _linked_groups(session: Session, post_id: int) -> tuple[set[int], set[int]]:
    """The ids of the tags and of the stories a post is on now."""
    tags = session.execute(select(col(PostTag.tag_id)).where(col(PostTag.post_id) == post_id))
    stories = session.execute(
        select(col(PostStory.story_id)).where(col(PostStory.post_id) == post_id)
    )
    return set(tags.scalars()), set(stories.scalars())


def _note_left(
    session: Session, table: type[Tag] | type[Story], ids: set[int], at: datetime
) -> None:
    """An essay left these tags or stories: their pages and feeds changed `at`."""
    if ids:
        later = case((col(table.left_at) > at, col(table.left_at)), else_=at)  # never backwards
        session.execute(update(table).where(col(table.id).in_(ids)).values(left_at=later))


def _get_or_create(
    session: Session,
    table: type[Tag] | type[Story],
    slug: str,
    values: dict[str, Any],
    known: dict[tuple[str, str], tuple[int, str]] | None = None,
) -> tuple[int, str]:
    """Insert-if-absent that two concurrent writers cannot turn into a unique violation; the
    row's id and its stored name (the first writer's spelling)."""
    if known is not None and (table.__name__, slug) in known:
        return known[(table.__name__, slug)]
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table).values(slug=slug, **values).on_conflict_do_nothing(index_elements=["slug"])
    session.execute(stmt)
    label = Tag.name if table is Tag else Story.title
    row = session.execute(select(table.id, label).where(table.slug == slug)).one()  # type: ignore[call-overload]
    found = int(row[0]), str(row[1])
    if known is not None:
        known[(table.__name__, slug)] = found
    return found


def _advance_id_sequence(session: Session) -> None:
    """Imported posts keep their ids; PostgreSQL's sequence must then skip past them."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            select(
                func.setval(
                    func.pg_get_serial_sequence("posts", "id"),
                    select(func.coalesce(func.max(Post.id), 1)).scalar_subquery(),
                )
            )
        )


def serialize_writers(session: Session) -> None:
    """Writers take turns, each for its whole transaction. A write stores the essay pages of
    its neighbours too, so two concurrent writes can touch the same page; taking one lock first,
    before any other, also gives every writer the same lock order (no deadlocks). SQLite's
    `BEGIN IMMEDIATE` already does this; on PostgreSQL it is the content-version row's lock,
    which the write's version bump would take anyway. Essays arrive one per cycle, so writers
    rarely wait."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_WRITERS_LOCK)


def _bump_content_version(session: Session) -> None:
    version = session.execute(
        update(SiteState)
        .where(col(SiteState.name) == CONTENT_VERSION)
        .values(value=SiteState.value + 1)
        .returning(col(SiteState.value))
    ).scalar_one()
    beacon.note_version(session, version)  # published to the other processes after the commit
    # The change time feeds Last-Modified. It moves forward at least one second per write, so a
    # client that only sends If-Modified-Since still sees two writes within the same second.
    now = int(utcnow().timestamp()) - CHANGED_AT_EPOCH
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(SiteState).values(name=CONTENT_CHANGED_AT, value=now)
    current = col(SiteState.value)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={"value": case((current + 1 > now, current + 1), else_=now)},
        )
    )


# --- reads ----------------------------------------------------------------------------------------


# Built once: every page asks for it, and building a statement costs more than running it.
_CONTENT_VERSION = select(col(SiteState.value)).where(col(SiteState.name) == CONTENT_VERSION)
_WRITERS_LOCK = _CONTENT_VERSION.with_for_update()


def content_version(session: Session) -> int:
    value = session.execute(_CONTENT_VERSION).scalar()
    return int(value or 0)


def get_post(session: Session, post_id: int, *, include_deleted: bool = False) -> Post:
    post = session.get(Post, post_id)
    if post is None:
        raise PostNotFound(f"no post with id {post_id}")
    if post.status == STATUS_DELETED and not include_deleted:
        raise PostGone(f"post {post_id} was deleted", post_id=post_id)
    return post


def post_id_for_cycle(session: Session, cycle: int) -> int:
    """The id of the cycle's essay, withdrawn or not (a withdrawn essay keeps its cycle, which
    no other essay can take): /cycle/{n} answers 410 for it, as its page does."""
    post_id = session.execute(select(col(Post.id)).where(col(Post.cycle) == cycle)).scalar()
    if post_id is None:
        raise PostNotFound(f"no essay for cycle {cycle}")
    return int(post_id)


Cursor = tuple[datetime, int]


def _key() -> Any:
    """The (published_at, id) order key of lists and neighbours, as one SQL row value."""
    return tuple_(Post.published_at, Post.id)


def list_published(session: Session, limit: int, before: Cursor | None = None) -> list[Post]:
    """Newest first, by key (published_at, id) so deep pages cost the same as the first."""
    query = select(Post).where(Post.status == STATUS_PUBLISHED)  # type: ignore[arg-type]
    if before is not None:
        at, post_id = before
        # A row-value comparison, so both databases seek the index to the key instead of walking
        # it from the newest post (an OR of two conditions is not an index range).
        query = query.where(_key() < (at, post_id))
    query = query.order_by(Post.published_at.desc(), Post.id.desc()).limit(limit)  # type: ignore[attr-defined, union-attr]
    return list(session.execute(query).scalars())


def neighbours(session: Session, post: Post) -> tuple[Post | None, Post | None]:
    """(previous = older, next = newer) published essays around `post`."""
    key = (post.published_at, post.id)
    published = Post.status == STATUS_PUBLISHED
    older = (
        session.execute(
            select(Post)
            .where(published, _key() < key)  # type: ignore[arg-type]
            .order_by(Post.published_at.desc(), Post.id.desc())  # type: ignore[attr-defined, union-attr]
            .limit(1)
        )
        .scalars()
        .first()
    )
    newer = (
        session.execute(
            select(Post)
            .where(published, _key() > key)  # type: ignore[arg-type]
            .order_by(Post.published_at.asc(), Post.id.asc())  # type: ignore[attr-defined, union-attr]
            .limit(1)
        )
        .scalars()
        .first()
    )
    return older, newer


def load_views(session: Session, posts: list[Post]) -> list[PostView]:
    """Attach minds, tags and stories to `posts` in three queries, whatever their number."""
    views = {p.id: PostView(p) for p in posts}
    if not views:
        return []
    ids = list(views)
    for mind in session.execute(
        select(Mind)
        .where(col(Mind.post_id).in_(ids))
        .order_by(col(Mind.post_id), col(Mind.position))
    ).scalars():
        views[mind.post_id].minds.append(mind)
    for post_id, tag in session.execute(
        select(col(PostTag.post_id), Tag)
        .join(Tag, col(Tag.id) == PostTag.tag_id)
        .where(col(PostTag.post_id).in_(ids))
        .order_by(col(PostTag.post_id), col(PostTag.position))
    ):
        views[post_id].tags.append(tag)
    for post_id, story, status in session.execute(
        select(col(PostStory.post_id), Story, col(PostStory.status))
        .join(Story, col(Story.id) == PostStory.story_id)
        .where(col(PostStory.post_id).in_(ids))
        .order_by(col(PostStory.post_id), col(PostStory.position))
    ):
        views[post_id].stories.append((story, status))
    return [views[p.id] for p in posts]


def revisions(session: Session, post_id: int) -> list[Revision]:
    get_post(session, post_id, include_deleted=True)
    return list(
        session.execute(
            select(Revision).where(Revision.post_id == post_id).order_by(Revision.id)  # type: ignore[arg-type]
        ).scalars()
    )


def iter_all_ids(session: Session, batch: int = 500) -> "list[int]":
    """Every post id (published or not), ascending; used by export and backups."""
    return list(session.execute(select(col(Post.id)).order_by(col(Post.id))).scalars())
