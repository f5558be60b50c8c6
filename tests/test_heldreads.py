"""Reads that share one held read transaction while the content version stays the same
(app/heldreads.py): a new version always reads the latest commit, and the transaction never
outlives `HOLD_SECONDS`, so the WAL can always be checkpointed and started over."""

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from app import heldreads
from app.heldreads import HeldReads

READ = "SELECT value FROM notes WHERE id = ?"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    path = tmp_path / "held.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO notes VALUES (1, 'first')")
    conn.close()
    return path


def _write(path: Path, value: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE notes SET value = ? WHERE id = 1", (value,))
    conn.close()


def _checkpoint(path: Path) -> tuple[int, int, int]:
    """(busy, WAL frames, frames checkpointed) of a TRUNCATE checkpoint: busy while a reader
    holds an old snapshot (not waited for)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        return conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()


@pytest.fixture(autouse=True)
def short_hold(monkeypatch) -> None:
    monkeypatch.setattr(heldreads, "HOLD_SECONDS", 0.05)


async def _holding(reads: HeldReads, version: int) -> str:
    """Read until the database has been quiet for a look: the read after it holds."""
    reads.fetchone(READ, (1,), version)  # the first look: nothing to compare with yet
    await asyncio.sleep(heldreads.HOLD_SECONDS * 1.5)
    return str(reads.fetchone(READ, (1,), version)[0])


def test_a_new_version_reads_the_latest_commit(path: Path) -> None:
    async def scenario() -> list[str]:
        reads = HeldReads(lambda: sqlite3.connect(path, isolation_level=None))
        try:
            seen = [await _holding(reads, 1)]
            _write(path, "second")  # committed; the version it bumps is 2
            seen.append(reads.fetchone(READ, (1,), 1)[0])  # still version 1: one snapshot
            seen.append(reads.fetchone(READ, (1,), 2)[0])
            return seen
        finally:
            reads.close()

    assert asyncio.run(scenario()) == ["first", "first", "second"]


def test_the_transaction_ends_within_the_hold(path: Path) -> None:
    async def scenario() -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        reads = HeldReads(lambda: sqlite3.connect(path, isolation_level=None))
        try:
            await _holding(reads, 1)
            _write(path, "second")
            held = _checkpoint(path)  # the reader's snapshot is older than the write
            await asyncio.sleep(heldreads.HOLD_SECONDS * 6)  # idle: no request ends it
            return held, _checkpoint(path)
        finally:
            reads.close()

    held, after = asyncio.run(scenario())
    assert held[0] == 1  # busy: the WAL could not be started over
    assert after == (0, 0, 0)  # checkpointed and truncated


def test_while_commits_go_on_each_read_is_its_own(path: Path) -> None:
    """Readers holding snapshots under traffic would keep the WAL from ever being started
    over while an import or a pages refresh writes: no transaction is held then."""

    async def scenario() -> list[tuple[int, int, int]]:
        reads = HeldReads(lambda: sqlite3.connect(path, isolation_level=None))
        checkpoints = []
        try:
            await _holding(reads, 1)
            for n in range(12):  # a writer that never bumps the version, 4 commits a hold
                _write(path, f"write {n}")
                await asyncio.sleep(heldreads.HOLD_SECONDS / 4)
                reads.fetchone(READ, (1,), 1)
                checkpoints.append(_checkpoint(path))
            return checkpoints
        finally:
            reads.close()

    checkpoints = asyncio.run(scenario())
    # Past the first holds, every checkpoint between two reads could start the WAL over.
    assert checkpoints[-4:] == [(0, 0, 0)] * 4, checkpoints


def test_outside_an_event_loop_each_read_is_its_own(path: Path) -> None:
    reads = HeldReads(lambda: sqlite3.connect(path, isolation_level=None))
    assert reads.fetchone(READ, (1,), 1)[0] == "first"
    _write(path, "second")
    assert reads.fetchone(READ, (1,), 1)[0] == "second"  # nothing would end a held one
    assert _checkpoint(path)[0] == 0
    reads.close()


def test_a_broken_connection_is_opened_again(path: Path) -> None:
    opened: list[sqlite3.Connection] = []

    def connect() -> sqlite3.Connection:
        opened.append(sqlite3.connect(path, isolation_level=None))
        return opened[-1]

    async def scenario() -> str:
        reads = HeldReads(connect)
        try:
            await _holding(reads, 1)
            opened[0].close()  # broken under a held transaction
            with pytest.raises(sqlite3.Error):
                reads.fetchone(READ, (1,), 1)
            reads.close()  # as the caller does after an error
            return str(reads.fetchone(READ, (1,), 2)[0])
        finally:
            reads.close()

    assert asyncio.run(scenario()) == "first" and len(opened) == 2


def test_a_loop_gone_leaves_no_transaction_held(path: Path) -> None:
    """A held transaction whose loop stopped (so its timer never fires) ends at the next
    read after the hold, in whatever loop."""
    reads = HeldReads(lambda: sqlite3.connect(path, isolation_level=None))
    try:
        asyncio.run(_holding(reads, 1))
        _write(path, "second")
        time.sleep(heldreads.HOLD_SECONDS * 1.5)

        async def later() -> str:
            return str(reads.fetchone(READ, (1,), 1)[0])

        assert asyncio.run(later()) == "second"  # the same version, a new snapshot
    finally:
        reads.close()
