"""Consistent online backups: SQLite's VACUUM INTO, pg_dump/pg_restore for PostgreSQL.

A refused backup or restore changes nothing. A backup is only taken of a Workshop database (one
whose `alembic_version` names a migration of ours), and a failed one leaves no file. A restore
checks the backup before it touches the database:
- SQLite: the backup is copied to a file beside the database, checked there (an SQLite file,
  undamaged, at a migration of ours), upgraded to the latest migration and made ready (content
  version, pack rows); only then is it copied into the database through SQLite's backup API. The
  database stays the same file, so a running `workshop serve` keeps its connections and its
  workers see the restored content at once (a file renamed over it would leave them on the old
  one).
- PostgreSQL: the dump must be a readable pg_dump archive of a Workshop database at the latest
  migration, and pg_restore runs in one transaction: if it fails, nothing was dropped.
pg_dump and pg_restore get the password in PGPASSWORD, never on their command line (`ps` shows
it), and their errors are reported without it.
"""

import contextlib
import os
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import NullPool, case, create_engine, make_url, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlmodel import Session, col

from app import beacon, db, pagepack
from app.config import Settings
from app.errors import WorkshopError
from app.models import SiteState
from app.posts import CONTENT_VERSION, content_version, serialize_writers


class BackupError(WorkshopError):
    title = "Backup failed"


def backup(settings: Settings, target: Path) -> None:
    if target.exists():
        raise BackupError(f"{target} already exists; choose a new file name")
    if settings.is_sqlite:
        _backup_sqlite(settings, target)
    else:
        _backup_postgresql(settings, target)


def restore(settings: Settings, source: Path) -> None:
    if not source.is_file():
        raise BackupError(f"{source} is not a file")
    if settings.is_sqlite:
        _restore_sqlite(settings, source)
    else:
        _restore_postgresql(settings, source)


# --- SQLite -----------------------------------------------------------------------------------


def _backup_sqlite(settings: Settings, target: Path) -> None:
    path = _sqlite_path(settings)
    if not path.is_file():
        raise BackupError(f"no database at {path}")
    try:
        with contextlib.closing(_read_only(path)) as conn:
            _known_revision(settings, _sqlite_revisions(conn, path), path)
            # VACUUM INTO reads one consistent snapshot while writers go on (WAL mode).
            conn.execute("VACUUM INTO ?", (str(target),))
    except sqlite3.Error as exc:
        target.unlink(missing_ok=True)  # it did not exist before (checked above)
        raise BackupError(f"backup of {path} to {target} failed: {exc}") from None


def _restore_sqlite(settings: Settings, source: Path) -> None:
    target = _sqlite_path(settings)
    if not target.is_file():
        # Like every command but `db upgrade` and `serve`: run from the wrong folder, it makes
        # no database there (a restore into it would look like it worked).
        raise BackupError(f"no database at {target}; `workshop db upgrade` makes an empty one")
    with _scratch_file(target) as copy:
        try:
            with (
                contextlib.closing(_read_only(source)) as src,
                contextlib.closing(sqlite3.connect(copy)) as dst,
            ):
                _known_revision(settings, _sqlite_revisions(src, source), source)
                src.backup(dst)
                damage = [row[0] for row in dst.execute("PRAGMA quick_check")]
        except sqlite3.Error as exc:
            raise BackupError(f"{source} cannot be restored: {exc}") from None
        if damage != ["ok"]:
            raise BackupError(f"{source} is damaged: {'; '.join(damage[:3])}")
        copy_settings = settings.model_copy(update={"database_url": f"sqlite:///{copy}"})
        try:
            db.upgrade(copy_settings)  # a backup from an older release
        except (SQLAlchemyError, CommandError) as exc:
            raise BackupError(
                f"{source} could not be upgraded to the latest migration: {exc}"
            ) from None
        version = _ready_copy(copy, _sqlite_content_version(target), pagepack.folder_of(target))
        try:
            with (
                contextlib.closing(sqlite3.connect(copy)) as src,
                contextlib.closing(sqlite3.connect(target)) as dst,
            ):
                src.backup(dst)
        except sqlite3.Error as exc:
            raise BackupError(f"restoring {source} into {target} failed: {exc}") from None
    _publish(settings, version)


def _sqlite_path(settings: Settings) -> Path:
    path = db.sqlite_path(settings.database_url)
    if path is None:
        raise BackupError("an in-memory database cannot be backed up")
    return path


def _read_only(path: Path) -> sqlite3.Connection:
    """Never creates the file (a plain connect would make an empty database of a wrong path)."""
    return sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)


def _sqlite_revisions(conn: sqlite3.Connection, path: Path) -> list[str]:
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is not a readable SQLite database ({exc})") from None
    if "alembic_version" not in tables:
        raise BackupError(f"{path} is not a Workshop database (no alembic_version table)")
    return [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]


@contextlib.contextmanager
def _scratch_file(target: Path) -> Iterator[Path]:
    """An empty file beside the database (the same disk, so the swap needs no more room
    elsewhere), removed afterwards with whatever SQLite made beside it."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.restore-", dir=target.parent)
    except OSError as exc:
        raise BackupError(f"cannot write beside {target}: {exc.strerror}") from None
    os.close(fd)
    try:
        yield Path(name)
    finally:
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(name + suffix).unlink(missing_ok=True)


def _sqlite_content_version(path: Path) -> int:
    try:
        with contextlib.closing(_read_only(path)) as conn:
            row = conn.execute(
                "SELECT value FROM site_state WHERE name = ?", (CONTENT_VERSION,)
            ).fetchone()
    except sqlite3.Error:  # an empty or broken database: the restore replaces it anyway
        return 0
    return int(row[0]) if row else 0


def _ready_copy(copy: Path, before: int, packs: Path) -> int:
    """Make the upgraded copy ready to be the database: its content version past `before`, and
    no pack row naming a file that is not in the database's pack folder (`workshop pages
    refresh` packs those pages again; until then they are read from `essay_pages`). Its new
    content version."""
    engine = create_engine(f"sqlite:///{copy}", poolclass=NullPool)
    try:
        with Session(engine) as session:
            pagepack.forget_missing(session, packs)
            version = _move_version_past(session, before)
            session.commit()
            return version
    finally:
        engine.dispose()


def _publish(settings: Settings, version: int) -> None:
    """Tell the running workers at once (they would see it at their next recheck anyway)."""
    engine = db.make_engine(settings)
    try:
        found = beacon.for_engine(engine)
        if found is not None:
            with contextlib.suppress(OSError):
                found.publish(version)
    finally:
        engine.dispose()


# --- PostgreSQL -------------------------------------------------------------------------------


def _backup_postgresql(settings: Settings, target: Path) -> None:
    try:
        failure = f"backup to {target} failed"
        _run_pg(settings, failure, "pg_dump", "--format=custom", "--no-owner", f"--file={target}")
        dumped = f"database {make_url(settings.database_url).database}"
        _known_revision(settings, _dump_revisions(target, dumped), dumped)
    except BaseException:
        target.unlink(missing_ok=True)  # it did not exist before (checked in `backup`)
        raise


def _restore_postgresql(settings: Settings, source: Path) -> None:
    revision = _known_revision(settings, _dump_revisions(source, source), source)
    head = _script(settings).get_current_head()
    if revision != head:
        # pg_restore --clean drops only what the dump holds: tables of later migrations would
        # stay and the upgrade would fail on them, half done.
        raise BackupError(
            f"{source} is a backup at migration {revision}; this release restores backups at"
            f" {head} only (restore it with the release it was taken with, then `workshop db"
            " upgrade`)"
        )
    before = _content_version(settings)
    _run_pg(
        settings,
        f"restoring {source} failed; the database is unchanged",
        "pg_restore",
        "--clean",
        "--if-exists",
        "--no-owner",
        "--single-transaction",  # a failure drops nothing
        str(source),
    )
    engine = db.make_engine(settings)
    try:
        with db.write_session(engine) as session:
            serialize_writers(session)
            version = _move_version_past(session, before)
            beacon.note_version(session, version)  # every worker hears of it (app/watch.py)
            session.commit()
    finally:
        engine.dispose()


def _content_version(settings: Settings) -> int:
    engine = db.make_engine(settings)
    try:
        with Session(engine) as session:
            return content_version(session)
    except DBAPIError:  # an empty or broken database: the restore replaces it anyway
        return 0
    finally:
        engine.dispose()


def _run_pg(settings: Settings, failure: str, tool: str, *args: str) -> None:
    """Run pg_dump or pg_restore on the database; the password goes in the environment."""
    url = make_url(db.normalize_url(settings.database_url)).set(drivername="postgresql")
    env = dict(os.environ)
    env.setdefault("PGCONNECT_TIMEOUT", str(db.PG_CONNECT_TIMEOUT))  # as the app's connections
    password = url.password
    if password:
        env["PGPASSWORD"] = str(password)
        url = url._replace(password=None)  # (`url.set(password=None)` keeps it)
    dbname = url.render_as_string(hide_password=False)
    run = _pg_tool(tool, f"--dbname={dbname}", *args, env=env)
    if run.returncode != 0:
        raise BackupError(f"{failure}: {_mask(run.stderr, password)}")


def _dump_revisions(dump: Path, what: object) -> list[str]:
    """The rows of the dump's `alembic_version` table (reading them checks the archive); `what`
    names the dumped database in the error."""
    run = _pg_tool("pg_restore", "--data-only", "--table=alembic_version", "--file=-", str(dump))
    if run.returncode != 0:
        raise BackupError(f"{dump} is not a pg_dump archive Workshop can read: {_mask(run.stderr)}")
    lines = iter(run.stdout.splitlines())
    for line in lines:
        if line.startswith("COPY ") and "alembic_version" in line:
            rows: list[str] = []
            for row in lines:
                if row == "\\.":
                    return rows
                rows.append(row)
    raise BackupError(f"{what} is not a Workshop database (no alembic_version table)")


def _pg_tool(
    tool: str, *args: str, env: dict[str, str] | None = None
) -> "subprocess.CompletedProcess[str]":
    try:
        return subprocess.run(
            [tool, *args], capture_output=True, text=True, errors="replace", env=env
        )
    except FileNotFoundError:
        raise BackupError(f"{tool} is not installed") from None


def _mask(text: str | None, password: str | None = None) -> str:
    text = (text or "").strip()
    if password:
        for form in {password, quote(password, safe="")}:
            text = text.replace(form, "***")
    return text


# --- both -------------------------------------------------------------------------------------


def _script(settings: Settings) -> ScriptDirectory:
    return ScriptDirectory.from_config(db.alembic_config(settings.database_url))


def _known_revision(settings: Settings, rows: list[str], what: object) -> str:
    """The migration the database or backup is at; refused unless it is one of ours."""
    if len(rows) != 1:
        raise BackupError(f"{what} is not a Workshop database (no migration recorded)")
    known = {script.revision for script in _script(settings).walk_revisions()}
    if rows[0] not in known:
        raise BackupError(
            f"{what} is at migration {rows[0]!r}, which this release does not have (it is from a"
            " later release, or not a Workshop database)"
        )
    return rows[0]


def _move_version_past(session: Session, before: int) -> int:
    """The backup's content version is older than the one caches and clients have seen
    (`before`): move it past both, so no cache entry or ETag from before the restore can match
    restored content. The new version."""
    return session.execute(
        update(SiteState)
        .where(col(SiteState.name) == CONTENT_VERSION)
        .values(value=case((col(SiteState.value) > before, SiteState.value), else_=before) + 1)
        .returning(col(SiteState.value))
    ).scalar_one()
