"""`workshop backup` while the engine is posting, `workshop restore` into an empty database:
the same site, as the export of both shows."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import add_post, test_settings
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
