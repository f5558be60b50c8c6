"""finished essay pages: each stored page as served (site URL filled in) and gzipped

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 01:30:00

A stored page used to hold a placeholder for the site URL, filled in, encoded and compressed
again on every request: two thirds of the cost of an essay page that the response cache did not
hold. A row now holds the page exactly as served (`html`), its gzip (`gzip`) and the key of the
build and site it was made for (`key`). Derived data, as in 0003: the old rows cannot be
served as they are, so the table starts empty and `workshop pages refresh` fills it (pages
without a row render live until then: correct, only slower).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_table("essay_pages")
    op.create_table(
        "essay_pages",
        sa.Column("post_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=40), nullable=False),
        sa.Column("html", sa.Text(), nullable=False),
        sa.Column("gzip", sa.LargeBinary(), nullable=False),
        sa.Column("etag", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["post_id"], ["posts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("post_id"),
    )
    if op.get_bind().dialect.name == "postgresql":
        # Out of line and uncompressed: PostgreSQL compressed a 14 KB page to 5 KB (pglz), and
        # decompressing it cost about 90 us of the server's CPU on every read. The gzip column
        # is compressed already.
        op.execute(
            "ALTER TABLE essay_pages ALTER COLUMN html SET STORAGE EXTERNAL,"
            " ALTER COLUMN gzip SET STORAGE EXTERNAL"
        )


def downgrade() -> None:
    op.drop_table("essay_pages")
    op.create_table(  # as 0003 made it, empty: `workshop pages refresh` of that build fills it
        "essay_pages",
        sa.Column("post_id", sa.Integer(), nullable=False),
        sa.Column("html", sa.Text(), nullable=False),
        sa.Column("etag", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["post_id"], ["posts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("post_id"),
    )
