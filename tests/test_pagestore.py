"""The workers' shared local copy of stored essay pages (app/pagestore.py): a page is answered
only under the content version it was kept at, the file stays within its bound, and a broken
file only means asking the database."""

import os
import random
import sqlite3
from pathlib import Path

import pytest

from app import pagestore
from app.config import Settings
from app.pagestore import Kept, LocalPages

PAGE = Kept("cycle-1-breadth", "published", b'W/"p1"', b"<html>one</html>")


def test_a_page_is_answered_only_under_the_version_it_was_kept_at(tmp_path: Path) -> None:
    pages = LocalPages(tmp_path / "pages.sqlite", 100)
    pages.put(1, False, 7, PAGE)
    assert pages.get(1, False, 7) == PAGE
    assert pages.get(1, False, 8) is None  # a write since: ask the database
    assert pages.get(1, True, 7) is None  # the other encoding was not kept
    newer = PAGE._replace(page=b"<html>two</html>", etag=b'W/"p2"')
    pages.put(1, False, 8, newer)  # replaces: one row per post and encoding
    assert pages.get(1, False, 8) == newer
    other = LocalPages(tmp_path / "pages.sqlite", 100)  # another worker: the row of 8 only
    assert (other.get(1, False, 7), other.get(1, False, 8)) == (None, newer)


def test_a_worker_indexes_the_rows_either_worker_kept_without_a_query_each(
    tmp_path: Path,
) -> None:
    """On a miss its index reads the rows written since it last looked, a batch at a time, and
    keeps them: a page known so is one `pread`, with no query (even with the table gone); a
    row written after it last looked it cannot know without the table."""
    first, second = (LocalPages(tmp_path / "pages.sqlite", 100) for _ in range(2))
    for post_id in (1, 2):
        second.put(post_id, False, 3, PAGE)
    assert first.get(1, False, 3) == PAGE  # one miss: both rows read into its index
    second.put(3, False, 3, PAGE)
    first._conn.close()  # no more queries
    assert first.get(2, False, 5, since=3) == PAGE
    assert first.get(2, False, 5, since=4) is None  # changed since it was kept
    assert first.get(3, False, 3) is None


def test_every_page_of_many_is_found_in_any_order(tmp_path: Path) -> None:
    """The index grows as posts come: every entry read back whole, in both encodings."""
    first, second = (LocalPages(tmp_path / "pages.sqlite", 2000) for _ in range(2))
    kept = {
        (n, gzip): PAGE._replace(slug=f"s{n}", page=b"%d" % n * (n % 7), etag=None)
        for n in range(1, 700)
        for gzip in (False, True)
    }
    for (n, gzip), page in kept.items():
        first.put(n, gzip, 2, page)
    order = list(kept)
    random.Random(3).shuffle(order)
    assert all(second.get(n, gzip, 2) == kept[n, gzip] for n, gzip in order)
    assert all(second.get(n, gzip, 2) == kept[n, gzip] for n, gzip in reversed(order))


def test_rows_put_while_the_other_worker_writes_go_in_at_the_next_flush(tmp_path: Path) -> None:
    """A worker never waits for the other's write lock: its rows wait for its next flush
    instead of being dropped (both workers filling the copy at once lost one in twenty)."""
    first = LocalPages(tmp_path / "pages.sqlite", 100)
    other = sqlite3.connect(tmp_path / "pages.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the other worker's write, under way
    first.put_later(1, False, 2, PAGE)
    first.put_later(2, True, 2, PAGE)
    first.flush()
    reader = LocalPages(tmp_path / "pages.sqlite", 100)
    assert reader.get(1, False, 2) is None
    other.execute("COMMIT")
    first.flush()
    assert reader.get(1, False, 2) == PAGE == reader.get(2, True, 2)


def test_every_worker_sees_what_another_kept(tmp_path: Path) -> None:
    first, second = (LocalPages(tmp_path / "pages.sqlite", 100) for _ in range(2))
    first.put(1, True, 3, PAGE)
    assert second.get(1, True, 3) == PAGE


def test_the_copy_keeps_within_its_bound_the_latest_kept(tmp_path: Path) -> None:
    pages = LocalPages(tmp_path / "pages.sqlite", 100)
    for post_id in range(1, pagestore.TRIM_EVERY * 2 + 1):
        pages.put(post_id, False, 1, PAGE)
    rows = sqlite3.connect(tmp_path / "pages.sqlite").execute("SELECT post_id FROM pages")
    kept = sorted(r[0] for r in rows)
    assert kept == list(range(pagestore.TRIM_EVERY * 2 - 99, pagestore.TRIM_EVERY * 2 + 1))


def test_two_workers_appending_in_turn_each_read_their_own_bytes(tmp_path: Path) -> None:
    first, second = (LocalPages(tmp_path / "pages.sqlite", 100) for _ in range(2))
    pages = {n: PAGE._replace(page=b"<html>%d</html>" % n * (n + 1)) for n in range(1, 9)}
    for n, kept in pages.items():  # each appends to the one file, after the other's bytes
        (first if n % 2 else second).put(n, False, 1, kept)
    for n, kept in pages.items():
        assert first.get(n, False, 1) == kept == second.get(n, False, 1)
    assert [p.name for p in tmp_path.glob("bytes-*")] == ["bytes-1.bin"]


def test_the_bytes_stay_within_two_files_and_a_removed_one_is_a_miss(tmp_path: Path) -> None:
    pages = LocalPages(tmp_path / "pages.sqlite", 4)
    big = PAGE._replace(page=b"x" * 20_000)  # a file holds about five (4 * BYTES_PER_ENTRY)
    for post_id in range(1, 31):
        pages.put(post_id, False, 1, big._replace(slug=f"s{post_id}"))
        assert len(list(tmp_path.glob("bytes-*.bin"))) <= 2
    assert pages.get(1, False, 1) is None  # its file was removed
    assert pages.get(30, False, 1) == big._replace(slug="s30")
    nothing = Kept("s31", "published", None, None)  # a post with no current page
    pages.put(31, False, 1, nothing)
    assert pages.get(31, False, 1) == nothing


def test_a_place_read_after_its_file_was_removed_is_a_miss(tmp_path: Path) -> None:
    pages = LocalPages(tmp_path / "pages.sqlite", 1)  # a file holds about one page
    big = PAGE._replace(page=b"y" * 30_000)
    pages.put(1, False, 1, big)
    place = pages.locate(1, False, 1)
    assert place is not None and pages.read(place) == big
    reader = LocalPages(tmp_path / "pages.sqlite", 1)  # another worker, nothing open yet
    for post_id in (2, 3):  # the next files start; the one holding post 1 is removed
        pages.put(post_id, False, 1, big)
    assert not (tmp_path / f"bytes-{place.file}.bin").exists()
    assert reader.read(place) is None and reader.get(1, False, 1) is None
    assert reader.get(3, False, 1) == big


def test_a_broken_copy_is_only_a_miss(tmp_path: Path, caplog) -> None:
    pages = LocalPages(tmp_path / "pages.sqlite", 100)
    pages.put(1, False, 1, PAGE)
    pages._conn.close()  # as if the file could not be read any more
    assert pages.get(1, False, 1) is None
    pages.put(2, False, 1, PAGE)  # no error: the next read asks the database
    assert pages.get(2, False, 1) is None
    warnings = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 1  # said once, not on every request of a busy worker


@pytest.mark.parametrize(
    ("environ", "url", "cache", "bound", "wanted"),
    [
        (True, "postgresql://u@h/db", True, 10, True),
        (False, "postgresql://u@h/db", True, 10, False),  # not under `workshop serve`
        (True, "sqlite:///x.db", True, 10, False),  # SQLite reads its own local file
        (True, "postgresql://u@h/db", False, 10, False),  # follows the response cache
        (True, "postgresql://u@h/db", True, 0, False),  # switched off
    ],
)
def test_a_worker_has_a_copy_only_when_serve_made_one(
    tmp_path: Path, monkeypatch, environ: bool, url: str, cache: bool, bound: int, wanted: bool
) -> None:
    if environ:
        monkeypatch.setenv(pagestore.ENV, str(tmp_path / "pages.sqlite"))
    else:
        monkeypatch.delenv(pagestore.ENV, raising=False)
    settings = Settings(database_url=url, response_cache=cache, page_copy_max_entries=bound)
    found = pagestore.for_worker(settings)
    assert (found is not None) == wanted
    if found is not None:
        found.close()


def test_serve_makes_one_folder_for_its_workers_and_removes_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again
    monkeypatch.delenv(pagestore.ENV, raising=False)
    settings = Settings(database_url="postgresql://u@h/db")
    with pagestore.shared_copy(settings):
        path = Path(os.environ[pagestore.ENV])
        assert path.parent.parent == tmp_path and path.parent.name.startswith("workshop-pages-")
        pagestore.for_worker(settings).close()  # type: ignore[union-attr]
        assert path.exists()
    assert pagestore.ENV not in os.environ and not list(tmp_path.iterdir())
    with pagestore.shared_copy(Settings(database_url="sqlite:///x.db")):  # SQLite: none
        assert pagestore.ENV not in os.environ
