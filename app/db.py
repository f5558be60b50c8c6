"""Database engine and sessions; migrations through Alembic."""

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi import Depends, Request
from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from app import pgwaits
from app.config import Settings
from app.pgwaits import PG_CONNECT_TIMEOUT, PG_KEEPALIVES


def normalize_url(url: str) -> str:
    """Accept the plain postgres:// URLs operators paste, and pick the psycopg 3 driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def make_engine(settings: Settings) -> Engine:
    url = normalize_url(settings.database_url)
    if url.startswith("sqlite"):
        timeout = settings.sqlite_busy_timeout_ms / 1000
        path = sqlite_path(url)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": timeout},
            **({"creator": lambda: _open_existing(path, timeout)} if path is not None else {}),
        )
        _configure_sqlite(engine, settings.sqlite_busy_timeout_ms)
        _write_queues[engine] = (threading.Lock(), timeout)
        return engine
    engine = create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=True,
        connect_args={"connect_timeout": PG_CONNECT_TIMEOUT, **PG_KEEPALIVES},
    )
    pgwaits.install(engine, settings.db_timeout_seconds)  # no wait for an answer is endless
    return engine


def _open_existing(path: Path, timeout: float) -> sqlite3.Connection:
    """A connection to the database file at `path`, which must exist: SQLite would otherwise
    make an empty database there (a command run from the wrong folder, a file deleted under a
    running server) and serve an empty site, or take writes nobody will read. Only `db
    upgrade` (and `serve` and `import`, which run it) creates the file, through Alembic's own
    engine."""
    uri = f"file:{quote(str(path))}?mode=rw"
    try:
        return sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=timeout)
    except sqlite3.OperationalError as exc:
        if not path.exists():
            raise sqlite3.OperationalError(
                f"no database at {path}: check WORKSHOP_DATABASE_URL, or create it with "
                "`workshop db upgrade`"
            ) from exc
        raise


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    path = sqlite_file(engine)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        # pysqlite's own transaction handling delays BEGIN; we issue BEGIN ourselves (below) so
        # that writers take the lock up front (BEGIN IMMEDIATE) and never deadlock on upgrade.
        dbapi_conn.isolation_level = None
        if path is not None:
            record.info[_FILE_ID] = _file_id(path)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA foreign_keys=ON")
        # FULL: a commit is on disk before the engine is answered. NORMAL (WAL's usual pairing)
        # may lose the last commits to a power loss or an OS crash, after their 201.
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get("sqlite_write"):
            _begin_immediate(conn, busy_timeout_ms)
            if path is not None and conn.connection.info.get(_FILE_ID) != _file_id(path):
                conn.exec_driver_sql("ROLLBACK")
                raise OperationalError(
                    "BEGIN IMMEDIATE",
                    None,
                    sqlite3.OperationalError(f"the database file {path} was removed or replaced"),
                )
        else:
            conn.exec_driver_sql("BEGIN")


# What a connection notes of the file it opened: a write checks the path still names it. A
# connection to a file deleted (or moved away) under a running server would take writes into
# a file nobody can open again, and acknowledge them: now they are refused (503).
_FILE_ID = "workshop_file_id"


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


WRITE_RETRY_SECONDS = 0.001
DEFAULT_BUSY_TIMEOUT_MS = 5000  # for an engine not made by make_engine


def _begin_immediate(conn: Any, busy_timeout_ms: int) -> None:
    """Take the write lock, waiting up to the busy timeout for another writer to finish.

    SQLite's own busy handler sleeps between tries, up to 100 ms at a time after the first
    few: writers queued behind each other slept through most of their wait (8 concurrent posts
    waited 1.5-2 s at p99 for writes of 20-60 ms). Here a waiting writer tries again every
    millisecond instead, and gives up (503) at the same deadline.
    """
    deadline = time.monotonic() + busy_timeout_ms / 1000
    conn.exec_driver_sql("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except OperationalError as exc:
                busy = getattr(exc.orig, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() >= deadline:
                    raise
            time.sleep(WRITE_RETRY_SECONDS)
    finally:
        conn.exec_driver_sql(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")


READER_BUSY_TIMEOUT_MS = 200

# Forks into this process so far. What is made per process (a connection, a mapping) is made
# again after one: a counter, read per request, costs no getpid() system call (glibc does not
# cache the pid).
forks = 0


def _forked() -> None:
    global forks
    forks += 1


os.register_at_fork(after_in_child=_forked)
_readers: "weakref.WeakKeyDictionary[Engine, tuple[int, Any]]" = weakref.WeakKeyDictionary()


def sqlite_reader(engine: Engine) -> Any:
    """This process's own DBAPI connection to an SQLite database, outside the engine's pool,
    for the short reads the event loop makes inline (the content version, a stored page). In
    autocommit mode every statement is its own read transaction, so it sees the latest commit;
    skipping the pool, BEGIN and ROLLBACK and SQLAlchemy's statement cache made a stored essay
    page's read about a third cheaper. Opened through the engine, so its connect hook (WAL,
    busy_timeout) applies; a forked or spawned worker opens its own."""
    found = _readers.get(engine)
    if found is None or found[0] != forks:
        found = _readers[engine] = (forks, sqlite_loop_connection(engine))
    return found[1]


def sqlite_loop_connection(engine: Engine) -> Any:
    """A new DBAPI connection to an SQLite database, outside the engine's pool, for reads made
    on the event loop (the caller closes it)."""
    proxy = engine.raw_connection()
    proxy.detach()
    conn: Any = proxy.dbapi_connection
    # It runs on the event loop: in the rare case it must wait (WAL recovery after a crash),
    # fail fast with a 503 rather than stall every request of this worker.
    conn.execute(f"PRAGMA busy_timeout={READER_BUSY_TIMEOUT_MS}")
    return conn


def forget_sqlite_reader(engine: Engine) -> None:
    """Close it (after an error, or at shutdown): the next read opens a new one."""
    found = _readers.pop(engine, None)
    if found is not None and found[0] == forks:
        with contextlib.suppress(Exception):
            found[1].close()


def sqlite_file(engine: Engine) -> Path | None:
    """The database file of an SQLite engine, absolute (what lives beside it is named after it:
    the beacon, the pack folder); None for PostgreSQL or a database in memory."""
    if engine.dialect.name != "sqlite":
        return None
    return sqlite_path(engine.url)


def sqlite_path(url: str | URL) -> Path | None:
    """The database file an SQLite URL names, absolute; None for a database in memory (or a
    `file:` URI) and for PostgreSQL."""
    if not str(url).startswith("sqlite"):
        return None
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).resolve()


def write_session(engine: Engine) -> Session:
    """A session whose transaction takes SQLite's write lock at BEGIN, so two writers queue
    on busy_timeout instead of failing on a lock upgrade (PostgreSQL ignores the option).

    On SQLite, writers of one process also queue on a lock of their own while the session is
    open (`with write_session(...)`): only one of them at a time polls for SQLite's lock, and
    the others wake as soon as it is done instead of polling beside it. (So a write session is
    never opened inside another one: the inner one would wait out the busy timeout.)"""
    if engine.dialect.name != "sqlite":
        return Session(engine.execution_options(sqlite_write=True))
    return _SqliteWriteSession(engine)


# Per SQLite engine: its writers' queue in this process, and how long one waits in it.
_write_queues: "weakref.WeakKeyDictionary[Engine, tuple[threading.Lock, float]]" = (
    weakref.WeakKeyDictionary()
)
_write_queues_lock = threading.Lock()


class _SqliteWriteSession(Session):
    def __init__(self, engine: Engine) -> None:
        super().__init__(engine.execution_options(sqlite_write=True))
        with _write_queues_lock:
            self._queue, self._timeout = _write_queues.setdefault(
                engine, (threading.Lock(), DEFAULT_BUSY_TIMEOUT_MS / 1000)
            )
        self._held = False

    def __enter__(self) -> "_SqliteWriteSession":
        # Past the timeout it goes on without the queue: SQLite's lock still keeps writes apart.
        self._held = self._queue.acquire(timeout=self._timeout)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)
        finally:
            if self._held:
                self._held = False
                self._queue.release()


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(files("app.migrations")))
    # ConfigParser interpolation would eat the "%" of URL-encoded passwords.
    cfg.set_main_option("sqlalchemy.url", normalize_url(database_url).replace("%", "%%"))
    return cfg


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings.database_url), revision)


def downgrade(settings: Settings, revision: str = "base") -> None:
    command.downgrade(alembic_config(settings.database_url), revision)


def is_at_head(engine: Engine) -> bool:
    url = engine.url.render_as_string(hide_password=False)
    script = ScriptDirectory.from_config(alembic_config(url))
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_heads()
    return set(current) == set(script.get_heads())


def get_session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
