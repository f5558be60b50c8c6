"""`workshop export` and `workshop import` at scale: a directory as the argument, a line per file
as it is done, a progress bar and the essays/second on stderr."""

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import add_post


def workshop(*args: str, database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WORKSHOP_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, cwd=cwd, capture_output=True, text=True
    )


def test_export_then_import_a_directory_reports_rates(
    tmp_path: Path, engine, database_url: str, second_database_url: str
) -> None:
    for i in range(3):
        add_post(engine, cycle=700 + i, title=f"Essay number {i}")
    out = tmp_path / "out"
    exported = workshop("export", str(out), database_url=database_url, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.strip() == f"exported 3 essays to {out}"
    assert "exporting" in exported.stderr
    assert re.search(r"exported 3 files in [\d.]+ s: \d+ essays/s", exported.stderr)

    (out / "notes.md").write_text("not an export file")  # only *.txt files are imported
    imported = workshop("import", str(out), database_url=second_database_url, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    lines = imported.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("imported") for line in lines)
    assert re.search(r"imported 3 files in [\d.]+ s: \d+ essays/s \(3 imported\)", imported.stderr)
