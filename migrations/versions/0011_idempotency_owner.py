"""idempotency owner: who holds an in-flight Idempotency-Key claim

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 15:00:00

A claim names the process that made it (its PostgreSQL advisory lock, or on SQLite its pid and
start time), so a retry takes over at once the claim of a worker that was killed mid-request
instead of answering 409 for a minute (app/idempotency.py). Claims made before the upgrade have
no owner and are taken over after that minute, as before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.add_column(
            sa.Column("owner", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.drop_column("owner")
