"""Consistent online backups: SQLite's VACUUM INTO, pg_dump/pg_restore for PostgreSQL."""

import shutil
import sqlite3
import subprocess
from pathlib import Path

from sqlalchemy import make_url

from app.config import Settings
from app.db import normalize_url
from app.errors import WorkshopError


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
