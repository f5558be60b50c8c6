"""Migrations and models agree, and every migration can go down and up again."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

from app import db
from app.config import Settings
from app.search import is_search_object


def _include(obj, name, type_, reflected, compare_to):  # type: ignore[no-untyped-def]
    return not is_search_object(name, type_)


def test_models_and_migrations_agree(engine, settings: Settings) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"include_object": _include, "compare_type": True}
        )
        diff = compare_metadata(context, SQLModel.metadata)
    assert diff == []


def test_downgrade_to_base_and_back(engine, settings: Settings) -> None:
    db.downgrade(settings, "base")
    tables = set(inspect(engine).get_table_names()) - {"alembic_version"}
    assert tables == set()
    db.upgrade(settings)
    assert db.is_at_head(engine)
    assert {
        "posts",
        "minds",
        "tags",
        "post_tags",
        "stories",
        "post_stories",
        "revisions",
        "api_tokens",
    } <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        version = conn.execute(text("SELECT value FROM site_state WHERE name = 'content_version'"))
        assert version.scalar() == 0


def test_search_index_follows_posts(engine) -> None:
    from conftest import add_post

    post = add_post(engine, title="Zeitgeist of the Tape", body="Volatility sellers got paid.")
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            found = (
                conn.execute(text("SELECT rowid FROM posts_fts WHERE posts_fts MATCH 'zeitgeist'"))
                .scalars()
                .all()
            )
        else:
            found = (
                conn.execute(
                    text(
                        "SELECT id FROM posts "
                        "WHERE search_vector @@ plainto_tsquery('english', 'zeitgeist')"
                    )
                )
                .scalars()
                .all()
            )
    assert found == [post.id]


def test_sqlite_runs_with_wal_and_busy_timeout(engine, settings: Settings) -> None:
    if not settings.is_sqlite:
        return
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert (
            conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == settings.sqlite_busy_timeout_ms
        )
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        # FULL (2): every commit is on disk before its writer is answered.
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2


def test_postgres_pool_is_sized_by_settings(settings: Settings) -> None:
    if settings.is_sqlite:
        return
    from conftest import test_settings

    engine = db.make_engine(test_settings(settings.database_url, db_pool_size=3, db_max_overflow=2))
    assert engine.pool.size() == 3  # type: ignore[attr-defined]
    engine.dispose()


def test_0007_keeps_stored_pages_with_their_slugs(engine, settings: Settings) -> None:
    """Stored essay pages survive the rebuild of their table (small columns first), each with
    its post's slug, and still serve."""
    from conftest import SITE_URL, sample_input
    from fastapi.testclient import TestClient

    from app import posts
    from app.fragments import Renderer
    from app.main import create_app

    renderer = Renderer.for_settings(settings)
    with db.write_session(engine) as session:
        post = posts.create_post(session, sample_input(), "Workshop", render=renderer).post  # type: ignore[arg-type]
        post_id, slug = post.id, post.slug
    with engine.connect() as conn:
        before = conn.execute(text("SELECT key, etag, html, gzip FROM essay_pages")).all()
    assert len(before) == 1
    db.downgrade(settings, "0006")
    db.upgrade(settings)
    with engine.connect() as conn:
        after = conn.execute(text("SELECT key, etag, html, gzip, slug FROM essay_pages")).all()
    assert [tuple(row[:4]) for row in after] == [tuple(row) for row in before]
    assert after[0][4] == slug
    app = create_app(settings)
    with TestClient(app, base_url=SITE_URL) as client:
        page = client.get(f"/read/{post_id}/{slug}")
    app.state.engine.dispose()
    assert page.status_code == 200 and page.headers["etag"] == before[0][1]
