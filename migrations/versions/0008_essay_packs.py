"""essay packs: where each stored essay page's bytes sit in a pack file beside an SQLite database

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 07:00:00

A small row per stored page (its key, slug and ETag, and where its bytes are in which file), read
instead of the `essay_pages` row's overflow pages (`app/pagepack.py`). Empty after the upgrade:
pages are read from `essay_pages` as before until `workshop pages refresh` packs them (or a write
stores them again). PostgreSQL gains the table and never uses it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "essay_packs",
        sa.Column("post_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=40), nullable=False),
        sa.Column("slug", sa.String(length=200), nullable=False),
        sa.Column("etag", sa.String(length=64), nullable=False),
        sa.Column("pack", sa.String(length=64), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("html_len", sa.Integer(), nullable=False),
        sa.Column("gzip_len", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["post_id"], ["posts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("post_id"),
    )


def downgrade() -> None:
    op.drop_table("essay_packs")
