"""Consistent online backups: SQLite's VACUUM INTO, pg_dump/pg_restore for PostgreSQL."""

import shutil
import sqlite3
import subprocess
from pathlib import Path

from sqlalchemy import case, make_url, update
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col

from app import pagepack
from app.config import Settings
from app.db import make_engine, normalize_url, write_session
from app.errors import WorkshopError
from app.models import SiteState
from app.posts import CONTENT_VERSION, content_version, serialize_writers


class BackupError(WorkshopError):
    title = "Backup failed"


def _sqlite_path(settings: Settings) -> str:
    database = make_url(settings.database_url).database
    if not database or database == ":memory:":
        raise BackupError("an in-memory database cannot be backed up")
    return database


def _pg_url(settings: Settings) -> str:
    url = make_url(normalize_url(settings.database_url)).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def backup(settings: Settings, target: Path) -> None:
    if target.exists():
        raise BackupError(f"{target} already exists; choose a new file name")
    if settings.is_sqlite:
        # VACUUM INTO reads one consistent snapshot while writers go on (WAL mode).
        with sqlite3.connect(_sqlite_path(settings)) as conn:
            conn.execute("VACUUM INTO ?", (str(target),))
        return
    if shutil.which("pg_dump") is None:
        raise BackupError("pg_dump is not installed")
    subprocess.run(
        ["pg_dump", "--format=custom", "--no-owner", f"--file={target}", _pg_url(settings)],
        check=True,
    )


def restore(settings: Settings, source: Path) -> None:
    if not source.is_file():
        raise BackupError(f"{source} is not a file")
    before = _content_version(settings)
    _restore(settings, source)
    # The backup's content version is older than the one caches and clients have seen: move it
    # past both, so no cache entry or ETag from before the restore can match restored content.
    engine = make_engine(settings)
    try:
        with write_session(engine) as session:
            serialize_writers(session)
            # A backup from another database: rows naming pack files not beside this one go.
            pagepack.forget_missing(session)
            session.execute(
                update(SiteState)
                .where(SiteState.name == CONTENT_VERSION)  # type: ignore[arg-type]
                .values(
                    value=case((col(SiteState.value) > before, SiteState.value), else_=before) + 1
                )
            )
            session.commit()
    finally:
        engine.dispose()


def _content_version(settings: Settings) -> int:
    engine = make_engine(settings)
    try:
        with Session(engine) as session:
            return content_version(session)
    except DBAPIError:  # an empty or broken database: the restore replaces it anyway
        return 0
    finally:
        engine.dispose()


def _restore(settings: Settings, source: Path) -> None:
    if settings.is_sqlite:
        with sqlite3.connect(str(source)) as src, sqlite3.connect(_sqlite_path(settings)) as dst:
            src.backup(dst)
        return
    if shutil.which("pg_restore") is None:
        raise BackupError("pg_restore is not installed")
    subprocess.run(
        [
            "pg_restore",
            "--clean",
            "--if-exists",
            "--no-owner",
            f"--dbname={_pg_url(settings)}",
            str(source),
        ],
        check=True,
    )
