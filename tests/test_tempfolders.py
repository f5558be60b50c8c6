"""The folders a `workshop serve` keeps in the temp dir (app/tempfolders.py): removed when it
stops, and, when it was killed, by the next serve; never while their serve runs."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from app import tempfolders
from app.config import Settings
from tests.conftest import start_server, stop_server
from tests.topology import worker_pids

PREFIX = "workshop-test-"

# A process that holds a folder as `workshop serve` does, says where, and waits.
_HOLDER = f"""
import time
from app import tempfolders
with tempfolders.held({PREFIX!r}) as folder:
    print(folder, flush=True)
    time.sleep(600)
"""


def _holder(tempdir: Path) -> tuple[subprocess.Popen[str], Path]:
    env = {**os.environ, "TMPDIR": str(tempdir)}
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLDER], env=env, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    return process, Path(process.stdout.readline().strip())


def _age(*folders: Path) -> None:
    past = time.time() - tempfolders.ABANDONED_AFTER - 1
    for folder in folders:
        os.utime(folder, (past, past))


def test_a_killed_holders_folder_is_removed_and_a_running_ones_is_not(tmp_path: Path) -> None:
    killed, left = _holder(tmp_path)
    running, kept = _holder(tmp_path)
    try:
        killed.kill()  # SIGKILL: no clean exit, its folder stays behind
        killed.wait()
        unlocked = tmp_path / f"{PREFIX}from-before-locks"
        unlocked.mkdir()
        (unlocked / "counter_1.db").write_bytes(b"x")
        starting = tmp_path / f"{PREFIX}starting"  # unheld, just made: its serve may be starting
        starting.mkdir()
        other = tmp_path / "workshop.db-pages"  # another prefix
        other.mkdir()
        _age(left, kept, unlocked, other)
        assert left.exists()

        assert tempfolders.remove_abandoned(str(tmp_path), PREFIX) == 2
        assert not left.exists() and not unlocked.exists()
        assert kept.exists() and starting.exists() and other.exists()
    finally:
        running.kill()
        running.wait()
    _age(kept)
    assert tempfolders.remove_abandoned(str(tmp_path), PREFIX) == 1  # its holder is gone now
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([starting.name, other.name])


def test_a_held_folder_is_removed_when_its_block_ends(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with tempfolders.held(PREFIX) as folder:
        (Path(folder) / "file").write_bytes(b"x")
        _age(Path(folder))
        assert tempfolders.remove_abandoned(str(tmp_path), PREFIX) == 0  # held by this process
    assert not list(tmp_path.iterdir())


def _wait_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
        Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in pids
    ):
        time.sleep(0.05)


def _serve_folders(tempdir: Path) -> list[Path]:
    return sorted(p for p in tempdir.iterdir() if p.name.startswith("workshop-"))


def test_serve_leaves_no_folders_behind_even_killed(settings: Settings, tmp_path: Path) -> None:
    tempdir = tmp_path / "tmp"
    tempdir.mkdir()
    env = {"TMPDIR": str(tempdir), "PROMETHEUS_MULTIPROC_DIR": ""}
    first = start_server(settings, tmp_path, workers=2, **env)
    made = set(_serve_folders(tempdir))
    # Its workers' metrics, and on PostgreSQL their local copy of pages.
    assert {p.name.rsplit("-", 1)[0] for p in made} == (
        {"workshop-metrics"} if settings.is_sqlite else {"workshop-metrics", "workshop-pages"}
    )
    # No clean exit, for the serve and its workers at once (as systemd kills a service's
    # processes). Killed alone, the serve left its workers running: still writing into their
    # metrics folder, which then was neither abandoned nor old.
    workers = worker_pids(first.process.pid)
    first.process.kill()
    first.process.wait()
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    _wait_gone(workers)
    assert set(_serve_folders(tempdir)) == made  # left behind
    old_copy = tempdir / f"{tempfolders.PAGES}from-postgresql-days"  # any database's serve
    old_copy.mkdir()
    _age(*made, old_copy)

    second = start_server(settings, tmp_path, workers=2, **env)
    try:
        now = _serve_folders(tempdir)
        assert len(now) == len(made) and not set(now) & (made | {old_copy})  # its own only
    finally:
        stop_server(second)
    assert second.process.returncode == 0
    assert _serve_folders(tempdir) == []  # a clean stop removes its own


def test_a_single_worker_serve_stopped_with_sigterm_removes_its_folders(
    settings: Settings, tmp_path: Path
) -> None:
    """One worker: uvicorn serves in the serve's own process, and after a SIGTERM raises the
    signal again once it has stopped; the folders go all the same, and the exit is clean."""
    tempdir = tmp_path / "tmp"
    tempdir.mkdir()
    env = {"TMPDIR": str(tempdir), "PROMETHEUS_MULTIPROC_DIR": ""}
    server = start_server(settings, tmp_path, workers=1, **env)
    assert _serve_folders(tempdir)
    stop_server(server)  # SIGTERM
    assert server.process.returncode == 0, server.log.read_text()
    assert _serve_folders(tempdir) == []


def test_a_killed_serves_workers_stop_with_it(settings: Settings, tmp_path: Path) -> None:
    """SIGKILL of the serve left its workers running for good: holding the port, serving the
    old code, and writing into folders nobody would remove."""
    server = start_server(settings, tmp_path, workers=2)
    workers = worker_pids(server.process.pid)
    assert len(workers) == 2
    server.process.kill()
    server.process.wait()
    _wait_gone(workers)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
    for pid in alive:  # left running: stopped here, so that the failure leaves no orphans
        os.kill(pid, signal.SIGKILL)
    assert alive == []


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False
