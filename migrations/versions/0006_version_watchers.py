"""version watchers: the workers that hear of every write through NOTIFY (PostgreSQL)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 04:30:00

Each worker on PostgreSQL holds a row here: a lease it renews, and the newest content version it
has heard of. A write waits until every worker with a live lease holds its version, so workers
answer from the version they hold without asking the database per request (app/watch.py).
SQLite never uses the table (its workers share the beacon file).
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import app.models

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # UNLOGGED on PostgreSQL: leases and acknowledgements are renewed within seconds and mean
    # nothing after a server restart, so they need no WAL, and their commits no flush to disk
    # (under load each flush held a writer waiting for its acknowledgements for up to 400 ms).
    unlogged = ["UNLOGGED"] if op.get_bind().dialect.name == "postgresql" else []
    op.create_table(
        "version_watchers",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("lease_until", app.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("seen_version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        prefixes=unlogged,
    )


def downgrade() -> None:
    op.drop_table("version_watchers")
