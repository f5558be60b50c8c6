"""token names unique among live tokens only: a revoked token's name can be used again

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 15:00:00

Operators rotate tokens by name (`token revoke engine`, then `token create engine`), which the
unique constraint on `api_tokens.name` refused: a revoked row kept its name. It becomes a partial
unique index over the rows with `revoked_at IS NULL`, so two live tokens still cannot share a name
(the database decides when two creates race) and revoked rows are kept as the record. Existing
rows are kept as they are.

Downgrading restores one row per name: of a name's revoked tokens it keeps only the latest, and
none beside a live one (revoked tokens authenticate nothing; only their list entry is lost).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = sa.text("revoked_at IS NULL")
# The name PostgreSQL gave the unnamed UNIQUE (name) of 0001.
POSTGRES_NAME_KEY = "api_tokens_name_key"
# SQLite keeps that constraint unnamed inside the table's definition: the batch rebuild names
# the table's unnamed constraints by this convention, so that it can leave this one out.
SQLITE_NAME_KEY = "uq_api_tokens_name"
SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(POSTGRES_NAME_KEY, "api_tokens", type_="unique")
    else:
        with op.batch_alter_table("api_tokens", naming_convention=SQLITE_NAMES) as batch:
            batch.drop_constraint(SQLITE_NAME_KEY, type_="unique")
    op.create_index(
        "uq_api_tokens_live_name",
        "api_tokens",
        ["name"],
        unique=True,
        sqlite_where=LIVE,
        postgresql_where=LIVE,
    )


def downgrade() -> None:
    op.execute(
        "DELETE FROM api_tokens WHERE revoked_at IS NOT NULL AND EXISTS ("
        " SELECT 1 FROM api_tokens AS other WHERE other.name = api_tokens.name"
        " AND (other.revoked_at IS NULL OR other.id > api_tokens.id))"
    )
    op.drop_index("uq_api_tokens_live_name", "api_tokens")
    if op.get_bind().dialect.name == "postgresql":
        op.create_unique_constraint(POSTGRES_NAME_KEY, "api_tokens", ["name"])
    else:
        with op.batch_alter_table("api_tokens", naming_convention=SQLITE_NAMES) as batch:
            batch.create_unique_constraint(SQLITE_NAME_KEY, ["name"])
