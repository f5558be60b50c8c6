"""essay pages, small columns first: the slug beside the page, the ETag before the bodies

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 12:50:00

SQLite stores a row's columns in order and a large value's tail in a chain of overflow pages,
which a read walks to reach any later column. Serving a stored essay page read the post's
status from `posts` (after its body and HTML: a walk through both) and the page's ETag after
both bodies. A row now holds, in order: the key, the post's slug, the ETag, the gzip (about
5 KB, what browsers and feed readers ask for) and the page (about 15 KB). A page is served from
this one row: a row exists only for a published post, and every write that changes a post's
slug or status rewrites or drops it in the same transaction. Existing rows are kept, with their
post's slug. PostgreSQL (large values stored out of line) only gains the column.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _columns(slug: bool) -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("post_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=40), nullable=False),
        *([sa.Column("slug", sa.String(length=200), nullable=False)] if slug else []),
        sa.Column("etag", sa.String(length=64), nullable=False),
        sa.Column("gzip", sa.LargeBinary(), nullable=False),
        sa.Column("html", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["post_id"], ["posts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("post_id"),
    ]


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.add_column("essay_pages", sa.Column("slug", sa.String(length=200), nullable=True))
        op.execute(
            "UPDATE essay_pages AS e SET slug = p.slug FROM posts AS p WHERE p.id = e.post_id"
        )
        op.alter_column("essay_pages", "slug", nullable=False)
        return
    op.create_table("essay_pages_new", *_columns(slug=True))
    op.execute(
        "INSERT INTO essay_pages_new (post_id, key, slug, etag, gzip, html)"
        " SELECT e.post_id, e.key, p.slug, e.etag, e.gzip, e.html"
        " FROM essay_pages AS e JOIN posts AS p ON p.id = e.post_id"
    )
    op.drop_table("essay_pages")
    op.rename_table("essay_pages_new", "essay_pages")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_column("essay_pages", "slug")
        return
    op.create_table("essay_pages_old", *_columns(slug=False))
    op.execute(
        "INSERT INTO essay_pages_old (post_id, key, etag, gzip, html)"
        " SELECT post_id, key, etag, gzip, html FROM essay_pages"
    )
    op.drop_table("essay_pages")
    op.rename_table("essay_pages_old", "essay_pages")
