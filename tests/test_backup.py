"""`workshop backup` while the engine is posting, `workshop restore` into an empty database:
the same site, as the export of both shows. And what they refuse (a file that is not a Workshop
backup, a missing database, a server that does not answer): refused, they change nothing."""

import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path

import lxml.html
import psycopg
import pytest
from conftest import PG_URL, _pg_admin_url, add_post, test_settings
from fastapi.testclient import TestClient
from sqlalchemy import make_url, text
from sqlmodel import Session

from app import db, posts, transfer


def workshop(database_url: str, *args: str) -> None:
    env = {**os.environ, "WORKSHOP_DATABASE_URL": database_url}
    subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, check=True, timeout=120)


def export(database_url: str, directory: Path) -> dict[str, str]:
    """Every published essay in the export format, by file name."""
    settings = test_settings(database_url)
    engine = db.make_engine(settings)
    try:
        paths = list(transfer.export_all(engine, settings, directory))
    finally:
        engine.dispose()
    return {p.name: p.read_text(encoding="utf-8") for p in paths}


def test_backup_under_write_load_restores_the_same_site(
    database_url, second_database_url, engine, tmp_path
) -> None:
    for n in range(5):
        add_post(engine, cycle=100 + n, title=f"Before the Backup {n}")
    stop = threading.Event()
    written: list[int] = []
    failures: list[BaseException] = []

    def engine_keeps_posting() -> None:
        n = 1000
        while not stop.is_set():
            try:
                written.append(add_post(engine, cycle=n, title=f"Written During Backup {n}").id)
            except BaseException as exc:  # reported by the test
                failures.append(exc)
                return
            n += 1

    writer = threading.Thread(target=engine_keeps_posting)
    writer.start()
    try:
        while len(written) < 3 and writer.is_alive():
            time.sleep(0.01)
        workshop(database_url, "backup", str(tmp_path / "live.backup"))
        during = len(written)
        while len(written) < during + 3 and writer.is_alive():
            time.sleep(0.01)  # the writer went on after the backup, so the source moved past it
    finally:
        stop.set()
        writer.join(30)
    assert not failures, failures

    workshop(second_database_url, "restore", str(tmp_path / "live.backup"))
    restored = export(second_database_url, tmp_path / "restored")
    source = export(database_url, tmp_path / "source")
    # The backup is one consistent point: the restored site is exactly the source's first posts.
    assert 5 < len(restored) < len(source)
    assert restored == {name: source[name] for name in restored}
    assert _ids(restored) == _ids_upto(source, max(_ids(restored)))  # no gap, nothing after

    # With the writer stopped, a second backup restores to exactly the same site.
    workshop(database_url, "backup", str(tmp_path / "quiet.backup"))
    before = _content_version(second_database_url)
    workshop(second_database_url, "restore", str(tmp_path / "quiet.backup"))
    assert export(second_database_url, tmp_path / "restored-again") == source
    # The restored content version is past the one caches and clients saw before the restore.
    assert _content_version(second_database_url) > before


def _content_version(database_url: str) -> int:
    engine = db.make_engine(test_settings(database_url))
    try:
        with Session(engine) as session:
            return posts.content_version(session)
    finally:
        engine.dispose()


def _ids(exported: dict[str, str]) -> list[int]:
    return sorted(int(text.rsplit("/read/", 1)[1].split("/", 1)[0]) for text in exported.values())


def _ids_upto(exported: dict[str, str], last: int) -> list[int]:
    return [i for i in _ids(exported) if i <= last]


# --- refusals: a refused command changes nothing ------------------------------------------------

HTML = {"accept": "text/html"}
OLDER_MIGRATION = "0007"


def run_workshop(
    database_url: str, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WORKSHOP_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def refused(database_url: str, *args: str, cwd: Path | None = None) -> str:
    """Run the command, check it was refused with one clear line; its message."""
    run = run_workshop(database_url, *args, cwd=cwd)
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr and run.stderr.startswith("Error: "), run.stderr
    return run.stderr


def titles(client: TestClient, essays: list[posts.Post]) -> list[str]:
    """The h1 of each essay's page as the running app serves it."""
    found = []
    for essay in essays:
        response = client.get(f"/read/{essay.id}/{essay.slug}", headers=HTML)
        assert response.status_code == 200, response.text[:300]
        doc = lxml.html.fromstring(response.text)
        found.append(" ".join(doc.xpath("string(//main//h1)").split()))
    return found


def dump(database_url: str, target: Path) -> None:
    """A backup made without `workshop backup` (which refuses some of the databases below)."""
    if PG_URL:
        url = make_url(database_url).set(drivername="postgresql")
        subprocess.run(
            ["pg_dump", "--format=custom", f"--file={target}", url.render_as_string(False)],
            check=True,
        )
    else:
        with closing(sqlite3.connect(make_url(database_url).database or "")) as conn:
            conn.execute("VACUUM INTO ?", (str(target),))


def empty_file(path: Path, second_database_url: str) -> None:
    path.write_bytes(b"")


def garbage(path: Path, second_database_url: str) -> None:
    path.write_bytes(b"not a database, not a dump\x00\xff" * 300)


def another_sqlite_database(path: Path, second_database_url: str) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('groceries')")
        conn.commit()


def a_later_release(path: Path, second_database_url: str) -> None:
    """A Workshop database at a migration this release does not have."""
    engine = db.make_engine(test_settings(second_database_url))
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    finally:
        engine.dispose()
    dump(second_database_url, path)


def truncated(path: Path, second_database_url: str) -> None:
    """A real backup cut short (a full disk, a copy interrupted)."""
    engine = db.make_engine(test_settings(second_database_url))
    try:
        for n in range(20):
            add_post(engine, cycle=500 + n, title=f"Cut Short {n}")
    finally:
        engine.dispose()
    dump(second_database_url, path)
    data = path.read_bytes()
    # PostgreSQL: only the archive's end is gone, so pg_restore starts, and fails part way (its
    # single transaction undoes what it did). SQLite: a quarter of the pages.
    path.write_bytes(data[:-100] if PG_URL else data[: len(data) * 3 // 4])


@pytest.mark.parametrize(
    "make", [empty_file, garbage, another_sqlite_database, a_later_release, truncated]
)
def test_a_restore_refuses_what_is_not_a_workshop_backup(
    make, database_url, second_database_url, engine, client, tmp_path
) -> None:
    essays = [add_post(engine, cycle=10 + n, title=f"Still Here {n}") for n in range(3)]
    assert titles(client, essays) == [e.title for e in essays]
    before = export(database_url, tmp_path / "before")
    bad = tmp_path / "bad.backup"
    make(bad, second_database_url)

    message = refused(database_url, "restore", str(bad))

    assert str(bad) in message
    # The running app still serves every essay, and the database holds exactly what it held.
    assert titles(client, essays) == [e.title for e in essays]
    assert export(database_url, tmp_path / "after") == before
    assert db.is_at_head(engine)
    assert not [p.name for p in tmp_path.iterdir() if ".restore-" in p.name]  # no scratch file


def test_a_backup_from_an_older_release_is_upgraded_or_refused(
    database_url, second_database_url, engine, client, tmp_path
) -> None:
    """SQLite: the backup is upgraded to the latest migration as it is restored. PostgreSQL:
    refused (pg_restore --clean would leave the later migrations' tables behind)."""
    live = [add_post(engine, cycle=10 + n, title=f"Live Essay {n}") for n in range(2)]
    old_engine = db.make_engine(test_settings(second_database_url))
    try:
        old = [add_post(old_engine, cycle=700 + n, title=f"Older Essay {n}") for n in range(3)]
    finally:
        old_engine.dispose()
    old_site = export(second_database_url, tmp_path / "old-site")
    db.downgrade(test_settings(second_database_url), OLDER_MIGRATION)
    workshop(second_database_url, "backup", str(tmp_path / "old.backup"))
    live_site = export(database_url, tmp_path / "live-site")
    version = _content_version(database_url)

    if PG_URL:
        message = refused(database_url, "restore", str(tmp_path / "old.backup"))
        assert OLDER_MIGRATION in message
        assert titles(client, live) == [e.title for e in live]
        assert export(database_url, tmp_path / "after") == live_site
        return

    workshop(database_url, "restore", str(tmp_path / "old.backup"))
    assert db.is_at_head(engine)
    assert export(database_url, tmp_path / "restored") == old_site
    assert _content_version(database_url) > version
    # The app that was running during the restore serves the restored essays at once.
    assert titles(client, old) == [e.title for e in old]
    assert not [p.name for p in tmp_path.iterdir() if ".restore-" in p.name]


def not_there(path: Path) -> None:
    pass


@pytest.mark.skipif(bool(PG_URL), reason="an SQLite file")
@pytest.mark.parametrize("make", [not_there, empty_file, another_sqlite_database])
def test_a_backup_of_no_workshop_database_is_refused_and_writes_nothing(
    make, tmp_path: Path
) -> None:
    """`cd wrongdir && workshop backup x.db` makes neither a backup nor a database."""
    wrong = tmp_path / "wrongdir"
    wrong.mkdir()
    if make is not not_there:
        make(wrong / "workshop.db", "")
    there = sorted(p.name for p in wrong.iterdir())
    contents = [p.read_bytes() for p in sorted(wrong.iterdir())]

    message = refused("sqlite:///./workshop.db", "backup", "x.db", cwd=wrong)

    assert str(wrong / "workshop.db") in message
    assert sorted(p.name for p in wrong.iterdir()) == there
    assert [p.read_bytes() for p in sorted(wrong.iterdir())] == contents


@pytest.mark.skipif(not PG_URL, reason="pg_dump")
def test_a_backup_of_an_empty_postgresql_database_is_refused_and_writes_nothing(
    tmp_path: Path,
) -> None:
    """The database URL names the wrong database: no backup of nothing."""
    name = f"workshop_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_pg_admin_url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
        target = tmp_path / "site.backup"
        message = refused(url, "backup", str(target))
        assert f"database {name} is not a Workshop database" in message
        assert not target.exists()
    finally:
        with psycopg.connect(_pg_admin_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.skipif(not PG_URL, reason="pg_dump")
def test_a_backup_from_a_server_that_does_not_answer_leaves_nothing_and_no_password(
    tmp_path: Path,
) -> None:
    password = "hunter2/Secret"
    url = make_url(PG_URL).set(password=password, host="127.0.0.1", port=1)
    target = tmp_path / "site.backup"

    message = refused(url.render_as_string(hide_password=False), "backup", str(target))

    assert str(target) in message and "127.0.0.1" in message
    assert "hunter2" not in message and "Secret" not in message
    assert not target.exists()  # so a retry is not told it "already exists"


STUB_PG_DUMP = """#!/bin/sh
printf '%s\\n' "$@" > "$0.argv"
printf '%s' "$PGPASSWORD" > "$0.password"
echo "pg_dump: error: could not connect to $1 with password $PGPASSWORD" >&2
exit 1
"""


def test_pg_dump_gets_the_password_in_its_environment_not_on_its_command_line(
    tmp_path: Path,
) -> None:
    """`ps` shows a command line to every user of the machine. (A stand-in pg_dump records what
    it was given; the real one, run by the test above, is not slowed down enough to watch.)"""
    tools = tmp_path / "bin"
    tools.mkdir()
    stub = tools / "pg_dump"
    stub.write_text(STUB_PG_DUMP)
    stub.chmod(0o755)
    password = "hunter2/Secret"
    url = make_url("postgresql://workshop@db.internal:5432/workshop").set(password=password)
    target = tmp_path / "site.backup"
    env = {
        **os.environ,
        "WORKSHOP_DATABASE_URL": url.render_as_string(hide_password=False),
        "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}",
    }

    run = subprocess.run(
        [sys.executable, "-m", "app.cli", "backup", str(target)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert run.returncode == 1 and run.stderr.startswith("Error: "), run.stderr
    argv = (tools / "pg_dump.argv").read_text().splitlines()
    assert "--dbname=postgresql://workshop@db.internal:5432/workshop" in argv
    assert not [arg for arg in argv if "hunter2" in arg]
    assert (tools / "pg_dump.password").read_text() == password
    assert "hunter2" not in run.stderr and "db.internal" in run.stderr  # what it said, masked
    assert not target.exists()
