"""The post service: the one path every write takes (API, importer, CLI)."""

import json
from datetime import UTC, datetime

import pytest
from conftest import add_post, sample_input
from sqlmodel import Session

from app import posts
from app.db import write_session
from app.errors import CycleConflict, PostGone, PreconditionFailed


def save(engine, data, **kwargs):  # type: ignore[no-untyped-def]
    with write_session(engine) as session:
        return posts.create_post(session, data, "Workshop", **kwargs)


def test_create_stores_everything(engine) -> None:
    post = add_post(engine)
    with Session(engine) as session:
        view = posts.load_views(session, [posts.get_post(session, post.id)])[0]
        assert view.post.slug == "breadth-is-thinning-under-a-calm-index"
        assert "<em>breadth</em>" in view.post.body_html
        assert view.post.published_at == datetime(2026, 4, 5, 15, 4, tzinfo=UTC)
        assert [(m.name, m.position, m.confidence) for m in view.minds] == [
            ("Macro", 0, 0.35),
            ("Flow", 1, 0.6),
            ("Contrarian", 2, 0.3),
        ]
        assert [t.slug for t in view.tags] == ["qqq", "breadth"]
        assert [(s.slug, status) for s, status in view.stories] == [
            ("narrow-leadership", "developing")
        ]
        assert view.to_input() == sample_input()
        assert posts.content_version(session) == 1


def test_retry_of_same_cycle_creates_nothing(engine) -> None:
    first = save(engine, sample_input())
    again = save(engine, sample_input())
    assert first.created and not again.created and again.post.id == first.post.id


def test_retry_without_published_at_matches(engine) -> None:
    first = save(engine, sample_input(published_at=None))
    again = save(engine, sample_input(published_at=None))
    assert not again.created and again.post.id == first.post.id


def test_same_cycle_other_content_conflicts_naming_the_post(engine) -> None:
    first = save(engine, sample_input())
    with pytest.raises(CycleConflict) as info:
        save(engine, sample_input(title="Something Else"))
    assert info.value.extra["post_id"] == first.post.id
    with pytest.raises(CycleConflict):
        save(engine, sample_input(published_at="2026-04-06T00:00:00Z"))


def test_update_keeps_revision_and_moves_slug(engine) -> None:
    post = add_post(engine)
    with write_session(engine) as session:
        result = posts.update_post(
            session, post.id, sample_input(title="Breadth Snaps Back"), "Workshop"
        )
        assert (
            result.changed and result.post.slug == "breadth-snaps-back" and result.post.version == 2
        )
        # published_at left out keeps the original instant.
        assert result.post.published_at == post.published_at
    with Session(engine) as session:
        revs = posts.revisions(session, post.id)
        assert [r.reason for r in revs] == ["update"]
        assert (
            json.loads(revs[0].snapshot)["input"]["title"]
            == "Breadth Is Thinning Under a Calm Index"
        )


def test_identical_update_changes_nothing(engine) -> None:
    post = add_post(engine)
    with write_session(engine) as session:
        assert not posts.update_post(session, post.id, sample_input(), "Workshop").changed
    with Session(engine) as session:
        assert posts.revisions(session, post.id) == []
        assert posts.content_version(session) == 1


def test_if_match_mismatch_is_refused_and_changes_nothing(engine) -> None:
    post = add_post(engine)
    with write_session(engine) as session, pytest.raises(PreconditionFailed):
        posts.update_post(session, post.id, sample_input(title="X"), "Workshop", if_match='"p1v99"')
    with write_session(engine) as session:
        current = posts.get_post(session, post.id)
        assert current.title == post.title
        posts.update_post(
            session, post.id, sample_input(title="X"), "Workshop", if_match=posts.etag(current)
        )


def test_delete_unpublishes_and_restore_brings_back(engine) -> None:
    post = add_post(engine)
    with write_session(engine) as session:
        posts.delete_post(session, post.id)
    with Session(engine) as session:
        with pytest.raises(PostGone):
            posts.get_post(session, post.id)
        assert posts.list_published(session, 10) == []
        revs = posts.revisions(session, post.id)
        assert [r.reason for r in revs] == ["delete"]
    with write_session(engine) as session:
        posts.restore_revision(session, post.id, revs[0].id, "Workshop")
    with Session(engine) as session:
        assert posts.get_post(session, post.id).status == "published"
        assert [r.reason for r in posts.revisions(session, post.id)] == ["delete", "restore"]


def test_keyset_pages_cover_everything_once(engine) -> None:
    ids = [
        add_post(
            engine,
            cycle=1000 + i,
            title=f"Essay {i}",
            published_at=f"2026-04-{1 + i // 3:02d}T12:00:00Z",
        ).id
        for i in range(10)
    ]
    seen: list[int] = []
    cursor = None
    with Session(engine) as session:
        while True:
            page = posts.list_published(session, 3, before=cursor)
            if not page:
                break
            seen += [p.id for p in page]
            cursor = (page[-1].published_at, page[-1].id)
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    assert seen[0] == ids[-1]
