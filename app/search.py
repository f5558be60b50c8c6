"""Full-text search: SQLite FTS5 or PostgreSQL tsvector, kept in step by the database itself.

On SQLite an external-content FTS5 table follows `posts` through triggers; on PostgreSQL a
generated tsvector column with a GIN index does. Both are created in the migrations, so every
create, edit and delete (from any worker) updates the index in the same transaction.
"""

SQLITE_FTS_TABLE = "posts_fts"
PG_VECTOR_COLUMN = "search_vector"


def is_search_object(name: str | None, type_: str) -> bool:
    if name is None:
        return False
    return name.startswith(SQLITE_FTS_TABLE) or name in (PG_VECTOR_COLUMN, "ix_posts_search_vector")
