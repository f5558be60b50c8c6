"""PostgreSQL reads shared by the requests waiting together (app/pgshared.py): the content
version and stored essay pages. One query answers everyone who arrived before it started, and
nobody takes an answer from a query that started before they arrived."""

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from conftest import add_post
from sqlalchemy import Engine
from sqlmodel import Session

from app import posts
from app.cache import VersionReader
from app.errors import PostNotFound
from app.essaypage import StoredPages
from app.pgshared import SharedReads, Wire


def _postgresql(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite reads these inline (the beacon, its own connection)")


def _version(engine: Engine) -> int:
    with Session(engine) as session:
        return posts.content_version(session)


def _watch(shared: SharedReads[Any, Any], around: Callable[..., Any]) -> None:
    """Put `around(fetch, conn, keys)` in front of the real fetch."""
    fetch = shared.fetch

    async def watched(conn: Any, keys: list[Any]) -> Any:
        return await around(fetch, conn, keys)

    shared.fetch = watched


def test_concurrent_version_reads_share_a_query(engine):
    _postgresql(engine)
    reader = VersionReader(engine, use_watcher=False)
    asked: list[list[Any]] = []

    async def counted(fetch: Any, conn: Any, keys: list[Any]) -> Any:
        asked.append(keys)
        return await fetch(conn, keys)

    _watch(reader._pg, counted)

    async def many() -> list[int]:
        try:
            return await asyncio.gather(*(reader.read() for _ in range(50)))
        finally:
            await reader.close()

    assert asyncio.run(many()) == [_version(engine)] * 50
    assert 1 <= len(asked) <= 2  # the first query, and one for those who came during it


def test_a_read_never_takes_an_answer_from_a_query_begun_before_it(engine):
    """A write acknowledged while a version query is on the wire: a request that arrives after
    the write waits for the next query, so it sees the write."""
    _postgresql(engine)
    reader = VersionReader(engine, use_watcher=False)
    release = asyncio.Event()
    calls = 0

    async def held(fetch: Any, conn: Any, keys: list[Any]) -> Any:
        nonlocal calls
        calls += 1
        found = await fetch(conn, keys)  # read before the write...
        if calls == 1:
            await release.wait()  # ...and still on the wire when the write is acknowledged
        return found

    _watch(reader._pg, held)

    async def scenario() -> tuple[int, int]:
        try:
            early = asyncio.create_task(reader.read())
            await asyncio.sleep(0.05)
            await asyncio.to_thread(add_post, engine)  # committed and acknowledged
            late = asyncio.create_task(reader.read())
            await asyncio.sleep(0.05)
            release.set()
            return await early, await late
        finally:
            await reader.close()

    before = _version(engine)
    early, late = asyncio.run(scenario())
    assert early == before
    assert late == _version(engine) > before


def test_a_failed_query_fails_its_waiters_and_the_next_read_asks_again(engine):
    _postgresql(engine)
    reader = VersionReader(engine, use_watcher=False)
    calls = 0

    async def failing_once(fetch: Any, conn: Any, keys: list[Any]) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("connection reset")
        return await fetch(conn, keys)

    _watch(reader._pg, failing_once)

    async def scenario() -> tuple[list[object], int]:
        try:
            failed = await asyncio.gather(reader.read(), reader.read(), return_exceptions=True)
            return failed, await reader.read()
        finally:
            await reader.close()

    failed, version = asyncio.run(scenario())
    assert all(isinstance(f, OSError) for f in failed)
    assert version == _version(engine)


def test_stored_pages_asked_together_come_in_one_query(engine):
    _postgresql(engine)
    made = [add_post(engine, title=f"Essay {n}", cycle=800 + n) for n in range(5)]
    pages = StoredPages(engine, "<!--page:any-->", use_watcher=False)
    asked: list[list[int]] = []

    async def counted(fetch: Any, conn: Any, keys: list[int]) -> Any:
        asked.append(sorted(keys))
        return await fetch(conn, keys)

    assert pages._pg is not None
    for reader in pages._pg:  # one per encoding
        _watch(reader, counted)
    ids = [p.id for p in made] * 3  # each asked three times at once

    async def many() -> list[object]:
        try:
            return await asyncio.gather(
                *(pages.get(i, gzip=n % 2 == 0) for n, i in enumerate([*ids, 999_999])),
                return_exceptions=True,
            )
        finally:
            await pages.close()

    found = asyncio.run(many())
    assert [f.id for f in found[:-1]] == ids  # type: ignore[union-attr]
    assert [f.slug for f in found[:5]] == [p.slug for p in made]  # type: ignore[union-attr]
    assert isinstance(found[-1], PostNotFound)
    assert sum(len(keys) for keys in asked) <= 2 * 2 * 6 and len(asked) <= 2 * 2


def test_the_wire_reports_a_failed_statement_and_keeps_answering(engine):
    """libpq driven from the event loop: an error names what failed, the connection goes on, and a
    connection the server closed is opened again by the next read."""
    _postgresql(engine)

    async def scenario() -> tuple[str, list[Any], list[Any]]:
        wire = await Wire.open(engine)
        try:
            try:
                await wire.query("SELECT no_such_column FROM site_state")
            except psycopg.DatabaseError as exc:
                error = str(exc)
            rows = await wire.query("SELECT $1::int + 1, NULL", [b"41"])
        finally:
            wire.close()
        reader = VersionReader(engine, use_watcher=False)
        try:
            await reader.read()
            assert reader._pg is not None and reader._pg._wire is not None
            backend = reader._pg._wire._pg.backend_pid
            with engine.connect() as conn:  # the server ends the reader's connection
                conn.exec_driver_sql(f"SELECT pg_terminate_backend({backend})")
            outcomes = await asyncio.gather(reader.read(), return_exceptions=True)
            outcomes.append(await reader.read())
        finally:
            await reader.close()
        return error, rows, outcomes

    error, rows, outcomes = asyncio.run(scenario())
    assert "no_such_column" in error
    assert rows == [(b"42", None)]
    assert outcomes[-1] == _version(engine)  # the next read after a lost connection is served
