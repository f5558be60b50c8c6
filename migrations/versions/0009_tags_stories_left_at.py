"""tags and stories remember when an edit last took an essay off them

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 15:00:00

An edit that drops a tag (or a story) from an essay changes that tag's page and feed, but no
essay still listed there changed: the sitemap's lastmod and the feed's `updated`, which are the
newest change of the listed essays, did not move. `left_at` is that change's time. NULL for every
existing row: what was dropped before this migration is not known.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.models import UTCDateTime

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("tags", "stories"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("left_at", UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for table in ("tags", "stories"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("left_at")
