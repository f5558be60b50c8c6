"""Every wait for PostgreSQL's answer is bounded (`app/pgwaits.py`): a statement that outlasts
the bound gives its connection up with an error the app answers 503; a server that answered
nothing meanwhile is taken for stalled (other waits fail at once) until it answers a probe.

A frozen server is `tests/test_faults.py`'s; here a statement that sleeps stands for one that
does not answer."""

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import PG_URL, test_settings
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from app import db, pgwaits
from app.pgshared import Wire

pytestmark = pytest.mark.skipif(
    not PG_URL, reason="PostgreSQL's waits (SQLite waits on its busy timeout)"
)

BOUND = 0.5
SLEEP = "SELECT pg_sleep(3)"


@pytest.fixture
def bounded(database_url: str) -> Iterator[Engine]:
    engine = db.make_engine(test_settings(database_url, db_timeout_seconds=BOUND))
    yield engine
    engine.dispose()


def _unanswered(engine: Engine, sql: str = SLEEP) -> tuple[OperationalError, float]:
    started = time.monotonic()
    with pytest.raises(OperationalError) as raised, engine.connect() as conn:
        conn.execute(text(sql))
    return raised.value, time.monotonic() - started


def test_a_statement_past_the_bound_gives_its_connection_up(bounded: Engine) -> None:
    with bounded.connect() as conn:  # an established connection, in the pool
        conn.execute(text("SELECT 1"))
    error, waited = _unanswered(bounded)
    assert isinstance(error.orig, pgwaits.DatabaseStalled)
    assert f"did not answer within {BOUND:g} s" in str(error.orig)
    assert BOUND <= waited < 2.5  # the bound, not the statement's 3 s
    assert bounded.pool.checkedout() == 0  # type: ignore[attr-defined]
    # The server answered nothing meanwhile: taken for stalled, the next caller fails at once.
    error, waited = _unanswered(bounded, "SELECT 1")
    assert isinstance(error.orig, pgwaits.DatabaseStalled) and waited < 0.2
    assert "not asked again yet" in str(error.orig)
    # A probe goes through after PROBE_SECONDS, is answered, and the stall is over.
    time.sleep(pgwaits.PROBE_SECONDS)
    with bounded.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
        assert conn.execute(text("SELECT 2")).scalar() == 2


def test_one_slow_statement_on_a_server_that_answers_others_stalls_nothing(
    bounded: Engine,
) -> None:
    stop = threading.Event()

    def others() -> None:
        with bounded.connect() as conn:
            while not stop.is_set():
                conn.execute(text("SELECT 1"))
                conn.rollback()
                time.sleep(0.05)

    answering = threading.Thread(target=others)
    answering.start()
    try:
        time.sleep(0.1)
        error, _ = _unanswered(bounded)
        assert isinstance(error.orig, pgwaits.DatabaseStalled)
    finally:
        stop.set()
        answering.join(10)
    started = time.monotonic()
    with bounded.connect() as conn:  # no stall: asked and answered at once
        assert conn.execute(text("SELECT 1")).scalar() == 1
    assert time.monotonic() - started < pgwaits.PROBE_SECONDS


def test_the_event_loops_connections_are_bounded_too(bounded: Engine) -> None:
    async def run() -> None:
        wire = await Wire.open(bounded)
        try:
            assert await wire.query("SELECT 1") == [(b"1",)]
            started = time.monotonic()
            with pytest.raises(pgwaits.DatabaseStalled, match="did not answer within"):
                await wire.query(SLEEP)
            assert time.monotonic() - started < 2.5
            assert not wire.usable  # given up: its answer is half read
            with pytest.raises(pgwaits.DatabaseStalled, match="not asked again yet"):
                await Wire.open(bounded)  # stalled: no new connection is tried
        finally:
            wire.close()

    asyncio.run(run())
