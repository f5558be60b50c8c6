"""SQLite's pack files (app/pagepack.py): a stored essay page is served from the pack file beside
the database, the same bytes as its `essay_pages` row; a missing or short file, or a write rolled
back, never changes what a reader gets; `workshop pages refresh --all` leaves one file, and so
does a refresh once left-behind bytes would outweigh the pages in use. PostgreSQL
never writes the table."""

import asyncio
import gzip
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import PG_URL, SITE_URL, post_json, sample_input, start_server, stop_server
from conftest import test_settings as make_settings
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text
from sqlmodel import Session

from app import backup, db, essaypage, pagepack, posts
from app.db import write_session
from app.fragments import Renderer
from app.main import create_app
from app.models import EssayPack

sqlite_only = pytest.mark.skipif(bool(PG_URL), reason="pack files are SQLite's (see the module)")


def _rows(engine: Engine) -> dict[int, tuple[str, int, int, int]]:
    with Session(engine) as session:
        found = session.execute(
            select(
                EssayPack.post_id,
                EssayPack.pack,
                EssayPack.at,
                EssayPack.html_len,
                EssayPack.gzip_len,
            )  # type: ignore[call-overload]
        ).all()
    return {row[0]: tuple(row[1:]) for row in found}


def _stored(engine: Engine) -> dict[int, tuple[bytes, bytes]]:
    with Session(engine) as session:
        found = session.execute(text("SELECT post_id, CAST(html AS BLOB), gzip FROM essay_pages"))
        return {row[0]: (bytes(row[1]), bytes(row[2])) for row in found}


def _create(engine: Engine, renderer: Renderer, n: int) -> posts.Post:
    data = sample_input(
        title=f"Essay {n} on Breadth", cycle=700 + n, published_at=f"2026-05-{n:02d}T15:04:00Z"
    )
    with write_session(engine) as session:
        post = posts.create_post(session, data, "Workshop", render=renderer).post
        session.expunge(post)
        return post


@pytest.fixture
def site(database_url: str) -> Iterator[tuple[TestClient, Engine, Renderer, Path | None]]:
    app = create_app(make_settings(database_url))
    with TestClient(app, base_url=SITE_URL, follow_redirects=False) as client:
        engine = app.state.engine
        yield client, engine, app.state.renderer, pagepack.folder(engine)
    app.state.engine.dispose()


def _pages(client: TestClient, made: list[posts.Post]) -> dict[int, tuple[bytes, bytes]]:
    """Each post's page as served, identity and gzip (as sent, not decoded)."""
    found = {}
    for post in made:
        path = f"/read/{post.id}/{post.slug}"
        plain = client.get(path, headers={"Accept-Encoding": "identity"})
        with client.stream("GET", path, headers={"Accept-Encoding": "gzip"}) as zipped:
            raw = b"".join(zipped.iter_raw())
            assert zipped.headers["content-encoding"] == "gzip"
        assert plain.status_code == 200 and zipped.status_code == 200
        found[post.id] = (plain.content, raw)  # type: ignore[index]
    return found


@sqlite_only
def test_a_page_is_served_from_its_pack_file_over_http(
    settings, tmp_path: Path, auth: dict[str, str]
) -> None:
    """Through `workshop serve`: each published essay has a pack row, its bytes in the file are
    its `essay_pages` row's, and what the server sends is what the file holds (bytes changed in
    the file, the same length, are what it sends)."""
    server = start_server(settings, tmp_path, workers=2)
    try:
        made = []
        for n in (1, 2, 3):
            body = post_json(cycle=800 + n, title=f"Packed {n}")
            answer = httpx.post(f"{server.url}/api/v1/posts", json=body, headers=auth)
            assert answer.status_code == 201, answer.text
            made.append(answer.json())
        engine = db.make_engine(settings)
        rows, stored = _rows(engine), _stored(engine)
        where = pagepack.folder(engine)
        engine.dispose()
        assert where is not None and set(rows) == {p["id"] for p in made} == set(stored)
        for post_id, (name, at, html_len, gzip_len) in rows.items():
            data = (where / name).read_bytes()
            assert data[at : at + html_len] == stored[post_id][0]
            assert data[at + html_len : at + html_len + gzip_len] == stored[post_id][1]
        # The last essay, not yet read by any worker: mark its bytes in the file.
        last = made[-1]
        name, at, html_len, _ = rows[last["id"]]
        page = stored[last["id"]][0]
        marked = page.replace(b"Packed 3", b"PACKED 3")
        assert marked != page and len(marked) == len(page)
        with open(where / name, "r+b") as pack:
            pack.seek(at)
            pack.write(marked)
        url = f"{server.url}/read/{last['id']}/{last['slug']}"
        for _ in range(4):  # each worker, whichever answers
            answer = httpx.get(url, headers={"Accept-Encoding": "identity"})
            assert answer.status_code == 200 and answer.content == marked
        first = made[0]
        answer = httpx.get(f"{server.url}/read/{first['id']}/{first['slug']}")
        assert answer.content == stored[first["id"]][0]  # httpx decodes the gzip it asked for
        # Another essay's bytes marked, then the file's pages let go of (as a machine short of
        # memory does): its bytes on disk are read in a thread, and sent all the same.
        second = made[1]
        name, at, html_len, _ = rows[second["id"]]
        page = stored[second["id"]][0]
        marked = page.replace(b"Packed 2", b"PACKED 2")
        with open(where / name, "r+b") as pack:
            pack.seek(at)
            pack.write(marked)
            pack.flush()
            os.fsync(pack.fileno())
        _evict(where)
        url = f"{server.url}/read/{second['id']}/{second['slug']}"
        for _ in range(4):
            answer = httpx.get(url, headers={"Accept-Encoding": "identity"})
            assert answer.status_code == 200 and answer.content == marked
    finally:
        stop_server(server)


@sqlite_only
def test_without_its_pack_file_a_page_is_read_from_the_database(site, database_url) -> None:
    """A copy of the database without its folder, or a file cut short: the same bytes, read from
    `essay_pages`; `workshop pages refresh` packs those pages again."""
    client, engine, renderer, where = site
    made = [_create(engine, renderer, n) for n in (1, 2, 3)]
    before = _pages(client, made)
    assert where is not None
    (name,) = {row[0] for row in _rows(engine).values()}
    with open(where / name, "r+b") as pack:
        pack.truncate(len(pagepack.HEADER) + 10)  # every page reads short
    with TestClient(create_app(make_settings(database_url)), base_url=SITE_URL) as fresh:
        assert _pages(fresh, made) == before  # a new app: nothing of the pages in memory
    shutil.rmtree(where)  # the folder gone
    with TestClient(create_app(make_settings(database_url)), base_url=SITE_URL) as fresh:
        assert _pages(fresh, made) == before
        fresh_engine = fresh.app.fastapi.state.engine  # type: ignore[attr-defined]
        assert sum(essaypage.refresh_all(fresh_engine, renderer)) == len(made)
        rows = _rows(fresh_engine)
        assert set(rows) == {p.id for p in made}
        assert {row[0] for row in rows.values()} == set(p.name for p in where.iterdir())
        assert _pages(fresh, made) == before
        assert sum(essaypage.refresh_all(fresh_engine, renderer)) == 0  # all packed now


@sqlite_only
def test_a_write_rolled_back_leaves_the_pack_rows_as_they_were(site) -> None:
    client, engine, renderer, where = site
    made = [_create(engine, renderer, n) for n in (1, 2)]
    before_rows, before_pages = _rows(engine), _pages(client, made)
    assert where is not None
    (name,) = {row[0] for row in before_rows.values()}
    size = (where / name).stat().st_size
    with write_session(engine) as session:
        essaypage.store_pages(session, renderer, {p.id for p in made})  # type: ignore[misc]
        session.rollback()
    assert (where / name).stat().st_size > size  # its bytes were written, and are unused
    assert _rows(engine) == before_rows
    assert _pages(client, made) == before_pages


@sqlite_only
def test_refresh_all_writes_one_new_file_and_removes_the_rest(site) -> None:
    client, engine, renderer, where = site
    made = [_create(engine, renderer, n) for n in (1, 2, 3, 4)]
    with write_session(engine) as session:  # a left-behind copy of each
        essaypage.store_pages(session, renderer, {p.id for p in made})  # type: ignore[misc]
        session.commit()
    before = _pages(client, made)
    assert where is not None
    (old,) = list(where.iterdir())
    assert sum(essaypage.refresh_all(engine, renderer, everything=True)) == len(made)
    (new,) = list(where.iterdir())
    assert new.name > old.name
    assert {row[0] for row in _rows(engine).values()} == {new.name}
    live = sum(row[2] + row[3] for row in _rows(engine).values())
    assert new.stat().st_size == len(pagepack.HEADER) + live  # nothing left behind
    assert _pages(client, made) == before
    for post_id, (plain, zipped) in before.items():
        assert gzip.decompress(zipped) == plain, post_id


@sqlite_only
def test_refresh_compacts_once_left_behind_bytes_outweigh_the_pages(site) -> None:
    """Each essay stores its neighbour's page again, an edit its own: their old copies stay in
    the pack file. `workshop pages refresh` leaves a little of that, and once it is as much as
    the pages in use writes them into one new file (their stored bytes, no render)."""
    client, engine, renderer, where = site
    made = [_create(engine, renderer, n) for n in (1, 2, 3, 4)]
    assert where is not None
    # Each essay made stored its neighbour's page again: start from one copy of each.
    assert sum(essaypage.refresh_all(engine, renderer, everything=True)) == len(made)
    (old,) = list(where.iterdir())
    with write_session(engine) as session:  # one page stored again: a quarter left behind
        essaypage.store_pages(session, renderer, {made[0].id})
        session.commit()
    assert sum(essaypage.refresh_all(engine, renderer)) == 0
    assert list(where.iterdir()) == [old]  # too little to be worth a new file
    with write_session(engine) as session:  # every page again: more left behind than in use
        essaypage.store_pages(session, renderer, {p.id for p in made})  # type: ignore[misc]
        session.commit()
    before = _pages(client, made)
    assert sum(essaypage.refresh_all(engine, renderer)) == len(made)
    (new,) = list(where.iterdir())
    assert new.name > old.name
    live = sum(row[2] + row[3] for row in _rows(engine).values())
    assert new.stat().st_size == len(pagepack.HEADER) + live
    assert _pages(client, made) == before


@sqlite_only
def test_the_refresh_command_says_what_compacting_freed(site, database_url, monkeypatch) -> None:
    from click.testing import CliRunner

    from app.cli import main

    client, engine, renderer, where = site
    made = [_create(engine, renderer, n) for n in (1, 2, 3)]
    for _ in range(2):  # two copies of every page left behind
        with write_session(engine) as session:
            essaypage.store_pages(session, renderer, {p.id for p in made})  # type: ignore[misc]
            session.commit()
    before = pagepack.size_on_disk(engine)
    monkeypatch.setenv("WORKSHOP_DATABASE_URL", database_url)
    monkeypatch.setenv("WORKSHOP_SITE_URL", SITE_URL)
    result = CliRunner().invoke(main, ["pages", "refresh"])
    assert result.exit_code == 0, result.output
    after = pagepack.size_on_disk(engine)
    assert after < before / 2
    assert f"pack files compacted: {before / 1e6:,.1f} MB -> {after / 1e6:,.1f} MB" in result.output


@sqlite_only
def test_a_refresh_after_a_template_change_leaves_one_copy_of_each_page(
    site, database_url: str
) -> None:
    """A deploy that changes the templates stores every page again: the refresh writes them
    into a new file and removes the old one, instead of leaving a copy per deploy beside it."""
    client, engine, renderer, where = site
    made = [_create(engine, renderer, n) for n in (1, 2, 3)]
    assert where is not None
    for deploy in ("Workshop, second deploy", "Workshop, third deploy"):
        other = Renderer.for_settings(make_settings(database_url, site_name=deploy))
        assert other.page_key != renderer.page_key
        assert sum(essaypage.refresh_all(engine, other)) == len(made)
        (only,) = list(where.iterdir())
        rows = _rows(engine)
        assert {row[0] for row in rows.values()} == {only.name}
        live = sum(row[2] + row[3] for row in rows.values())
        assert only.stat().st_size == len(pagepack.HEADER) + live


def test_only_sqlite_writes_pack_rows(site) -> None:
    """No folder on PostgreSQL: pages are read from `essay_pages`, the table stays empty."""
    client, engine, renderer, where = site
    made = [_create(engine, renderer, n) for n in (1, 2)]
    assert _pages(client, made)
    if PG_URL:
        assert where is None and _rows(engine) == {}
    else:
        assert where is not None and set(_rows(engine)) == {p.id for p in made}


@sqlite_only
def test_a_restore_forgets_pack_rows_whose_files_are_not_beside_it(
    site, second_database_url, tmp_path: Path
) -> None:
    """A backup restored into another database: its pages are read from the database (no row
    points at a file that is not there), until `workshop pages refresh` packs them again."""
    client, engine, renderer, where = site
    made = [_create(engine, renderer, n) for n in (1, 2)]
    before = _pages(client, made)
    backup.backup(client.app.fastapi.state.settings, tmp_path / "backup.db")  # type: ignore[attr-defined]
    restored_settings = make_settings(second_database_url)
    backup.restore(restored_settings, tmp_path / "backup.db")
    restored_app = create_app(restored_settings)
    with TestClient(restored_app, base_url=SITE_URL) as restored:
        restored_engine = restored_app.state.engine
        assert _rows(restored_engine) == {}
        assert _pages(restored, made) == before
        assert sum(essaypage.refresh_all(restored_engine, renderer)) == len(made)
        assert set(_rows(restored_engine)) == {p.id for p in made}
        assert _pages(restored, made) == before
    restored_engine.dispose()


@sqlite_only
def test_where_a_page_is_is_kept_only_while_nothing_is_written(site) -> None:
    """A worker keeps each page's pack row it read (`StoredPages._places`) while the content
    version stays the same, as its memo keeps pages: an edit, and a neighbour's edit, show at
    once."""
    client, engine, renderer, where = site
    made = [_create(engine, renderer, n) for n in (1, 2, 3)]
    stored = client.app.fastapi.state.stored_pages  # type: ignore[attr-defined]
    first = _pages(client, made)
    assert {p.id for p in made if stored._places.get(p.id)} == {p.id for p in made}
    assert len(stored._places) == len(made)  # kept: read once per version
    rows = _rows(engine)
    edited = sample_input(
        title="Essay 2 on Breadth", cycle=702, published_at="2026-05-02T15:04:00Z", body="Edited."
    )
    with write_session(engine) as session:
        posts.update_post(session, made[1].id, edited, "Workshop", render=renderer)  # type: ignore[arg-type]
    after = _pages(client, made)
    assert b"Edited." in after[made[1].id][0] and b"Edited." not in first[made[1].id][0]
    for post in made:  # the neighbours show its new minds and title: stored again, moved
        assert _rows(engine)[post.id][1] != rows[post.id][1]  # type: ignore[index]
        assert after[post.id] == _stored(engine)[post.id]  # type: ignore[index]


def test_places_keep_a_whole_archive_of_rows_compactly(monkeypatch) -> None:
    """`Places` gives back each row as it was read (its ETag as bytes, whether it is this
    build's page), keeps 100,000 rows in a few MB (the dict it replaced held 20,000), and
    starts again when full, or for a post it cannot index."""
    places = pagepack.Places("<!--page:ours-->")
    rows = {
        n: (
            "<!--page:ours-->" if n % 7 else "<!--page:old-->",
            f"slug-{n}-wörd",
            f'W/"p{n:024x}"',
            f"0000000{n % 3}-abc.pack",
            n * 20_000,
            14_000 + n % 500,
            4_000 + n % 300,
        )
        for n in range(1, 100_001)
    }
    for n, row in rows.items():
        assert places.row(n, row) == places.get(n)
    assert len(places) == 100_000
    assert len(places._rows) < 8 * 1024 * 1024 and len(places._index) < 200_000
    for n in (1, 7, 99_999, 100_000):
        key, slug, etag, name, at, html_len, gzip_len = rows[n]
        assert places.get(n) == (
            key == "<!--page:ours-->",
            slug,
            etag.encode(),
            name,
            at,
            html_len,
            gzip_len,
        )
    assert places.get(0) is None and places.get(100_001) is None and places.get(-1) is None

    places.row(pagepack.PLACES_IDS, rows[1])  # past the ids indexed: given, not kept
    assert places.get(pagepack.PLACES_IDS) is None
    places.clear()
    assert len(places) == 0 and places.get(1) is None

    monkeypatch.setattr(pagepack, "PLACES_BYTES", 1000)
    for n in range(1, 40):
        places.row(n, rows[n])
    assert 0 < len(places) < 39 and places.get(39) is not None and places.get(1) is None


def _can_evict(where: Path) -> bool:
    """Whether the kernel lets go of a file's cached pages here when asked, and a read tells
    (`RWF_NOWAIT`): a scratch file written, synced, dropped, read. (A tmpfs keeps its pages;
    some file systems cannot tell.) Not the pack files: a read that misses starts the kernel
    reading ahead, and the file would be back in memory."""
    scratch = where / "scratch.bin"
    scratch.write_bytes(os.urandom(64 * 1024))
    fd = os.open(scratch, os.O_RDWR)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.preadv(fd, [bytearray(4096)], 32 * 1024, os.RWF_NOWAIT)
        return False  # still in memory
    except BlockingIOError:
        return True
    except OSError:  # cannot tell (EOPNOTSUPP, EINVAL)
        return False
    finally:
        os.close(fd)
        scratch.unlink()


def _evict(where: Path) -> None:
    for path in where.glob(f"*{pagepack.SUFFIX}"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


@sqlite_only
def test_a_page_on_disk_is_read_in_a_thread_not_on_the_event_loop(site, monkeypatch) -> None:
    """A page whose pack bytes the kernel let go of is not read on the event loop, where the
    wait for the disk would stall every request of the worker: `get_now` cannot tell, and
    `read` (which the front door awaits) gives the same page, its bytes read in a thread.
    Then they are in memory again, and `get_now` tells at once."""
    client, engine, renderer, where = site
    assert where is not None
    made = [_create(engine, renderer, n) for n in (1, 2)]
    served = _pages(client, made)
    stored = client.app.fastapi.state.stored_pages  # type: ignore[attr-defined]
    post = made[0]
    evictable = _can_evict(where)  # else (a tmpfs): every read is in memory, and answered now
    read_in: list[int] = []
    plain_pread = os.pread

    def pread(fd: int, length: int, at: int) -> bytes:
        read_in.append(threading.get_ident())
        return plain_pread(fd, length, at)

    monkeypatch.setattr(os, "pread", pread)

    async def read_cold() -> list[tuple[essaypage.Stored | None, essaypage.Stored]]:
        fresh = essaypage.StoredPages(engine, stored.page_key)  # nothing kept yet
        loop_thread = threading.get_ident()
        try:
            found = []
            for gzip in (False, True):
                _evict(where)
                now = fresh.get_now(post.id, gzip)
                assert (now is None) == evictable
                read_in.clear()
                found.append((now, await fresh.read(post.id, gzip)))
                if evictable:  # the bytes came from the pack file, in a thread
                    assert read_in and loop_thread not in read_in
            assert fresh.get_now(post.id, True) is not None  # just read: in memory again
            return found
        finally:
            await fresh.close()

    (plain_now, plain), (zipped_now, zipped) = asyncio.run(read_cold())
    assert plain.page == served[post.id][0] and zipped.page == served[post.id][1]
    assert plain.slug == post.slug and plain.etag is not None and zipped.etag == plain.etag
    for now, read in ((plain_now, plain), (zipped_now, zipped)):
        assert now is None or now == read


def test_where_reads_cannot_tell_what_is_in_memory_they_are_plain(tmp_path) -> None:
    """A kernel or file system without `RWF_NOWAIT` (a tmpfs here; an older kernel) fails the
    read that would tell: the reader then reads plainly, for good, rather than give up the
    pack file. And a file cut short is not taken for one on disk."""
    (tmp_path / "1.pack").write_bytes(b"0123456789")
    reader = pagepack.PackReader(tmp_path)
    reader._nowait = 1 << 30  # a flag no kernel knows: EOPNOTSUPP, as on a tmpfs
    assert reader.read("1.pack", 2, 5, wait=False) == b"23456"
    assert reader._nowait is None and reader.read("1.pack", 4, 3, wait=False) == b"456"
    reader = pagepack.PackReader(tmp_path)
    assert reader.read("1.pack", 8, 5, wait=False) is None  # short: no wait would help
    assert asyncio.run(reader.read_waiting("1.pack", 0, 4)) == b"0123"
    reader.close()
