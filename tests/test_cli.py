"""The operator's `workshop` command, run as a real subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import httpx
from conftest import PG_URL, add_post, start_server, stop_server, test_settings

from app import db


def workshop(*args: str, database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WORKSHOP_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, cwd=cwd, capture_output=True, text=True
    )


def test_db_upgrade_on_an_empty_database(tmp_path: Path, template_database: str) -> None:
    if PG_URL:
        import uuid

        import psycopg
        from conftest import _pg_admin_url
        from sqlalchemy import make_url

        name = f"workshop_empty_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(_pg_admin_url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{tmp_path / 'empty.db'}"
    run = workshop("db", "upgrade", database_url=url, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    engine = db.make_engine(test_settings(url))
    assert db.is_at_head(engine)
    engine.dispose()
    if PG_URL:
        with psycopg.connect(_pg_admin_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_serve_upgrades_an_empty_sqlite_file(tmp_path: Path) -> None:
    settings = test_settings(f"sqlite:///{tmp_path / 'fresh.db'}")
    server = start_server(settings, tmp_path)
    try:
        assert httpx.get(server.url + "/readyz").json() == {"status": "ready"}
        assert httpx.get(server.url + "/").status_code == 200
    finally:
        stop_server(server)


def test_post_revisions_and_restore(tmp_path: Path, engine, database_url: str) -> None:
    from conftest import sample_input

    from app import posts

    post = add_post(engine)
    with db.write_session(engine) as session:
        posts.update_post(session, post.id, sample_input(title="Second Title"), "Workshop")
    listing = workshop("post", "revisions", str(post.id), database_url=database_url, cwd=tmp_path)
    assert listing.returncode == 0 and "update" in listing.stdout
    revision_id = listing.stdout.split()[0]
    restore = workshop(
        "post", "restore", str(post.id), revision_id, database_url=database_url, cwd=tmp_path
    )
    assert restore.returncode == 0, restore.stderr
    from sqlmodel import Session

    with Session(engine) as session:
        assert posts.get_post(session, post.id).title == post.title
    missing = workshop("post", "revisions", "999999", database_url=database_url, cwd=tmp_path)
    assert missing.returncode != 0 and "no post" in missing.stderr


def test_backup_and_restore_round_trip(
    tmp_path: Path, engine, database_url: str, second_database_url: str
) -> None:
    import shutil

    import pytest

    if PG_URL and shutil.which("pg_dump") is None:
        pytest.fail("pg_dump is required for PostgreSQL backups")
    add_post(engine)
    backup = tmp_path / "backup.bin"
    run = workshop("backup", str(backup), database_url=database_url, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    again = workshop("backup", str(backup), database_url=database_url, cwd=tmp_path)
    assert again.returncode != 0 and "already exists" in again.stderr
    restored = workshop("restore", str(backup), database_url=second_database_url, cwd=tmp_path)
    assert restored.returncode == 0, restored.stderr
    first = workshop("export", str(tmp_path / "a"), database_url=database_url, cwd=tmp_path)
    second = workshop("export", str(tmp_path / "b"), database_url=second_database_url, cwd=tmp_path)
    assert first.returncode == second.returncode == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names and names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_help_lists_every_operator_command(tmp_path: Path) -> None:
    run = workshop("--help", database_url="sqlite:///x.db", cwd=tmp_path)
    for command in ("serve", "db", "token", "import", "export", "backup", "restore"):
        assert command in run.stdout


def test_an_operators_mistake_is_one_line_naming_it_and_changes_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "elsewhere" / "workshop.db"
    cases = [
        (["token", "list"], {"WORKSHOP_TIMEZONE": "Mars/Base"}, "WORKSHOP_TIMEZONE"),
        (["db", "upgrade"], {"WORKSHOP_PAGE_SIZE": "-5"}, "WORKSHOP_PAGE_SIZE"),
        (["token", "create", "engine"], {}, f"no database at {missing}"),
        (["export", str(tmp_path / "out")], {}, f"no database at {missing}"),
        (
            ["token", "list"],
            {"WORKSHOP_DATABASE_URL": "postgresql://postgres:s3cret@127.0.0.1:1/x"},
            "database: connection",
        ),
        (["serve", "--port", "99999"], {}, "99999 is not in the range"),
    ]
    for args, env, words in cases:
        run = subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            env={**os.environ, "WORKSHOP_DATABASE_URL": f"sqlite:///{missing}", **env},
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert run.returncode in (1, 2), (args, run.stderr)
        assert words in run.stderr, (args, run.stderr)
        assert "Traceback" not in run.stderr and "s3cret" not in run.stderr, run.stderr
        assert not missing.parent.exists()  # no empty database made on the way
        assert not (tmp_path / "workshop.db").exists()


def test_export_refuses_a_folder_an_older_export_is_in(
    tmp_path: Path, engine, database_url: str
) -> None:
    add_post(engine)
    first = workshop("export", str(tmp_path / "out"), database_url=database_url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = sorted((tmp_path / "out").iterdir())
    again = workshop("export", str(tmp_path / "out"), database_url=database_url, cwd=tmp_path)
    assert again.returncode == 1 and "export into an empty folder" in again.stderr
    assert sorted((tmp_path / "out").iterdir()) == before
