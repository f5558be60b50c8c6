"""revisions keep the publish time the essay had before the change

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 15:00:00

An edit that moves an essay to another month changes the archive page of the month it left,
though no essay still listed there changed: that month's sitemap lastmod did not move. The
revision made by the edit now says where the essay was (`published_at`) and when it left
(`created_at`). NULL for revisions made before: their snapshot holds it, but reading every
snapshot to learn it is not worth what it would tell a crawler about months past.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.models import UTCDateTime

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("revisions") as batch:
        batch.add_column(sa.Column("published_at", UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("revisions") as batch:
        batch.drop_column("published_at")
