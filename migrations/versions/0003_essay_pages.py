"""essay pages: the complete HTML of each published essay's page, stored at write time

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 06:40:00

Derived data: `workshop pages refresh` (re)writes every row, and a page without a current row
renders live, so the upgrade itself needs no data migration.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "essay_pages",
        sa.Column("post_id", sa.Integer(), nullable=False),
        sa.Column("html", sa.Text(), nullable=False),
        sa.Column("etag", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["post_id"], ["posts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("post_id"),
    )


def downgrade() -> None:
    op.drop_table("essay_pages")
