"""post page html: the essay page's post-only HTML, rendered at write time

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 03:46:53.086083

Generated with autogenerate; plain ALTER TABLE (not batch) on both databases, so SQLite keeps the
posts table, and with it the full-text search triggers, instead of recreating it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("posts", sa.Column("page_html", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("posts", "page_html")
