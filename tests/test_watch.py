"""PostgreSQL workers hear of every write through NOTIFY, and every write waits until each
worker with a live lease has heard of it (app/watch.py): a worker answers from the version it
holds, never older than a write acknowledged before the request began."""

import asyncio
import sqlite3
import threading
import time
from typing import Any

import httpx
import pytest
from conftest import SITE_URL, add_post, start_server, stop_server
from sqlalchemy import Engine, text
from sqlmodel import Session

from app import essaypage, pagestore, posts, watch
from app.cache import VersionReader
from app.db import write_session
from app.essaypage import StoredPages
from app.fragments import Renderer
from app.pagestore import Kept, LocalPages


def _postgresql(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite workers share the beacon file instead")


def _version(engine: Engine) -> int:
    with Session(engine) as session:
        return posts.content_version(session)


def _watchers(engine: Engine) -> dict[str, tuple[int, bool]]:
    """Each watcher's seen version, and whether its lease is live."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, seen_version, lease_until > now() FROM version_watchers")
        )
        return {row[0]: (row[1], row[2]) for row in rows}


def _stored_post(engine: Engine, renderer: Renderer) -> posts.Post:
    """A post with its stored page, as the API leaves it."""
    post = add_post(engine)
    with write_session(engine) as session:
        essaypage.store_pages(session, renderer, {post.id})  # type: ignore[arg-type]
        session.commit()
    return post


async def _trusted(watcher: watch.Watcher) -> None:
    for _ in range(500):
        if watcher.trusted:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the watcher never took its lease")


def test_a_write_is_heard_by_the_watcher_before_it_is_acknowledged(engine) -> None:
    _postgresql(engine)

    async def scenario() -> tuple[int, int, dict[str, Any], dict[str, Any]]:
        watcher = watch.for_engine(engine)
        try:
            await _trusted(watcher)
            held = _watchers(engine)
            post = await asyncio.to_thread(add_post, engine)  # returns once acknowledged
            heard = watcher.version  # read at once: no waiting for the notice here
            return heard, post.id, held, _watchers(engine)
        finally:
            await watch.close(engine)

    before = _version(engine)
    heard, _, held, after = asyncio.run(scenario())
    assert heard == _version(engine) > before
    assert list(held.values()) == [(before, True)]
    assert list(after.values()) == [(heard, True)]
    assert _watchers(engine) == {}  # it left when it closed: nobody waits for it


def test_a_watcher_that_misses_its_renewals_stops_trusting_before_writers_stop_waiting(
    engine,
) -> None:
    """The worker's event loop stalls past the lease: a write meanwhile waits for the lease to
    end, not for the stalled worker. When the loop runs again, the worker does not trust the
    version it holds (older than that write) until it has read the database again."""
    _postgresql(engine)
    done: list[int] = []

    def write() -> None:
        add_post(engine)
        done.append(_version(engine))

    async def scenario() -> tuple[bool, int, int]:
        watcher = watch.for_engine(engine)
        try:
            await _trusted(watcher)
            writer = threading.Thread(target=write)
            writer.start()
            time.sleep(watch.LEASE_SECONDS)  # the loop stalls: no renewal, no notice read
            writer.join()  # the write was acknowledged while this worker was stalled
            trusted_after_stall, held = watcher.trusted, watcher.version
            await _trusted(watcher)
            return trusted_after_stall, held, watcher.version
        finally:
            await watch.close(engine)

    before = _version(engine)
    trusted_after_stall, held, later = asyncio.run(scenario())
    assert done == [_version(engine)] and done[0] > before
    assert held == before  # it had not heard of the write...
    assert not trusted_after_stall  # ...and did not trust what it held
    assert later == done[0]  # trusted again only once it held the write


def test_a_watcher_that_cannot_hear_its_own_notice_never_trusts_what_it_holds(
    engine, monkeypatch
) -> None:
    """As through PgBouncer in transaction mode, where LISTEN hears nothing: the worker keeps
    reading the version from the database, and sees every write."""
    _postgresql(engine)
    monkeypatch.setattr(watch, "PROBE_SQL", "SELECT pg_notify('elsewhere', $1)")
    reader = VersionReader(engine)

    async def scenario() -> tuple[bool, int]:
        try:
            watcher = watch.for_engine(engine)
            await asyncio.sleep(4 * watch.RENEW_SECONDS)  # renewals, yet no notice of its own
            await asyncio.to_thread(add_post, engine)
            return watcher.trusted, await reader.read()
        finally:
            await reader.close()

    trusted, version = asyncio.run(scenario())
    assert not trusted
    assert version == _version(engine)


def test_the_leases_are_kept_out_of_the_write_ahead_log(engine) -> None:
    """Acknowledgements commit without a flush to disk: a writer waits for them under load."""
    _postgresql(engine)
    with engine.connect() as conn:
        persistence = conn.execute(
            text("SELECT relpersistence FROM pg_class WHERE relname = 'version_watchers'")
        ).scalar()
    assert persistence == "u"  # UNLOGGED


def test_a_dead_watcher_holds_writers_only_until_its_lease_ends(engine) -> None:
    _postgresql(engine)
    with engine.begin() as conn:  # a worker that took a lease and then died
        conn.execute(
            text(
                "INSERT INTO version_watchers VALUES"
                " ('gone:1:dead', now() + interval '1 second', 0)"
            )
        )
    add_post(engine)
    assert _watchers(engine) == {"gone:1:dead": (0, False)}  # the write waited for its lease


def _count_queries(pages: StoredPages) -> list[list[int]]:
    """The posts each of these pages' database reads asked for."""
    queries: list[list[int]] = []
    assert pages._pg is not None
    for reader in pages._pg:
        fetch = reader.fetch

        async def counted(wire: Any, keys: list[int], fetch: Any = fetch) -> Any:
            queries.append(keys)
            return await fetch(wire, keys)

        reader.fetch = counted
    return queries


def test_a_trusted_worker_answers_kept_pages_without_a_query(engine, settings) -> None:
    _postgresql(engine)
    renderer = Renderer.for_settings(settings)
    post = _stored_post(engine, renderer)
    pages = StoredPages(engine, renderer.page_key)
    queries = _count_queries(pages)

    async def scenario() -> list[bytes | None]:
        try:
            await _trusted(watch.for_engine(engine))
            first = await pages.get(post.id)  # type: ignore[arg-type]
            again = [await pages.get(post.id) for _ in range(5)]  # type: ignore[arg-type]
            await asyncio.to_thread(add_post, engine, cycle=9001)  # any write: kept pages go
            after_write = await pages.get(post.id)  # type: ignore[arg-type]
            return [first.page, *(a.page for a in again), after_write.page]
        finally:
            await pages.close()

    served = asyncio.run(scenario())
    assert len(set(served[:6])) == 1 and served[0]
    assert served[6] is None  # the new neighbour, written without a renderer, dropped the page
    assert queries == [[post.id], [post.id]]  # the first read, and the one after the write


def test_a_trusted_worker_keeps_knowing_a_page_is_not_current_without_a_query(
    engine, settings
) -> None:
    """A page stored for another build or site (after a deploy, until `workshop pages
    refresh`) is kept as "none current" like a page, as on SQLite: a popular essay then costs
    no query per request."""
    _postgresql(engine)
    renderer = Renderer.for_settings(settings)
    post = _stored_post(engine, renderer)
    pages = StoredPages(engine, "another build's key")
    queries = _count_queries(pages)

    async def scenario() -> list[bytes | None]:
        try:
            await _trusted(watch.for_engine(engine))
            return [(await pages.get(post.id)).page for _ in range(5)]  # type: ignore[arg-type]
        finally:
            await pages.close()

    assert asyncio.run(scenario()) == [None] * 5
    assert queries == [[post.id]]


def test_workers_share_the_pages_they_read_and_never_a_stale_one(
    engine, settings, tmp_path
) -> None:
    """Two workers of one serve, one local copy (app/pagestore.py): a page one read from the
    database the other answers without a query (then from its own memory), until a write moves
    the version on."""
    _postgresql(engine)
    renderer = Renderer.for_settings(settings)
    post = _stored_post(engine, renderer)
    copy = tmp_path / "pages.sqlite"
    first, second = (
        StoredPages(engine, renderer.page_key, local=LocalPages(copy, 100)) for _ in range(2)
    )
    asked = [_count_queries(first), _count_queries(second)]
    file_reads: list[int] = []
    local = second._local
    assert local is not None
    local_locate = local.locate

    def counted_locate(post_id: int, gzip: bool, version: int, since: int | None = None) -> Any:
        file_reads.append(post_id)
        return local_locate(post_id, gzip, version, since)

    local.locate = counted_locate  # type: ignore[method-assign]

    async def scenario() -> list[bytes | None]:
        try:
            await _trusted(watch.for_engine(engine))
            read = await first.get(post.id)  # type: ignore[arg-type]
            shared = await second.get(post.id)  # type: ignore[arg-type]
            again = await second.get(post.id)  # type: ignore[arg-type]
            assert again.page == shared.page and file_reads == [post.id]  # kept in memory now
            # Acknowledged: both workers hold the new version.
            await asyncio.to_thread(_edit, engine, renderer, post, "Minds now agree: gone.")
            after_second = await second.get(post.id)  # type: ignore[arg-type]
            after_first = await first.get(post.id)  # type: ignore[arg-type]
            return [read.page, shared.page, after_second.page, after_first.page]
        finally:
            await first.close()
            await second.close()

    served = asyncio.run(scenario())
    assert served[0] and served[0] == served[1]
    assert served[2] and b"gone." in served[2] and served[2] != served[0]
    assert served[3] == served[2]  # the first worker's copy of the old page was not answered
    assert asked == [[[post.id]], [[post.id]]]  # one read each: first before, second after


def _edit(engine: Engine, renderer: Renderer, post: posts.Post, body: str) -> None:
    """Give the post a new body, as the ingest API's PUT does (its page stored again)."""
    with write_session(engine) as session:
        current = posts.load_views(session, [posts.get_post(session, post.id)])[0]
        edited = current.to_input().model_copy(update={"body": body})
        posts.update_post(session, post.id, edited, "Workshop", render=renderer)  # type: ignore[arg-type]


def test_a_full_copy_takes_a_page_only_when_a_worker_reads_it_again(
    engine, settings, tmp_path
) -> None:
    """Once the machine's copy has had to let pages go, a page a worker read once from the
    database is not written to it (readers spread over the whole archive would rewrite it on
    every request); read again, it is."""
    _postgresql(engine)
    renderer = Renderer.for_settings(settings)
    post = _stored_post(engine, renderer)
    local = LocalPages(tmp_path / "pages.sqlite", 1)
    other = Kept("another", "published", b'W/"x"', b"<html>x</html>")
    for i in range(pagestore.TRIM_EVERY):  # more than its bound of one: it lets pages go
        assert not local.full
        local.put(10_000 + i, False, 0, other)
    assert local.full
    pages = StoredPages(engine, renderer.page_key, local=local)
    asked = _count_queries(pages)

    async def scenario() -> tuple[Any, Any]:
        try:
            watcher = watch.for_engine(engine)
            await _trusted(watcher)
            await pages.get(post.id)  # type: ignore[arg-type]
            once = local.locate(post.id, False, watcher.version)  # type: ignore[arg-type]
            await asyncio.to_thread(_edit, engine, renderer, post, "Minds now differ.")
            read = await pages.get(post.id)  # type: ignore[arg-type]  # a new version: again
            twice = local.locate(post.id, False, watcher.version)  # type: ignore[arg-type]
            assert read.page is not None and b"Minds now differ." in read.page
            return once, twice
        finally:
            await pages.close()

    once, twice = asyncio.run(scenario())
    assert once is None and twice is not None
    assert asked == [[post.id], [post.id]]


def test_two_hosts_serve_every_edit_at_once(settings, engine, tmp_path) -> None:
    """Two servers of two workers each on one database: after each write is acknowledged,
    every request to either host sees it, with no wait and no retry."""
    _postgresql(engine)
    renderer = Renderer.for_settings(settings)
    post = _stored_post(engine, renderer)
    path = f"/read/{post.id}/{post.slug}"
    site = {"WORKSHOP_SITE_URL": SITE_URL, "WORKSHOP_SITE_NAME": settings.site_name}
    servers = [start_server(settings, tmp_path, workers=2, **site) for _ in range(2)]
    try:
        with httpx.Client() as client:
            for _ in range(20):  # a connection each: every worker reads the page and keeps it
                for server in servers:
                    assert httpx.get(server.url + path).status_code == 200
            deadline = time.monotonic() + 30
            while sum(live for _, live in _watchers(engine).values()) < 4:
                assert time.monotonic() < deadline, _watchers(engine)
                time.sleep(0.05)
            for round_ in range(10):
                with write_session(engine) as session:
                    current = posts.load_views(session, [posts.get_post(session, post.id)])[0]
                    edited = current.to_input().model_copy(update={"body": f"Round {round_}."})
                    posts.update_post(session, post.id, edited, "Workshop", render=renderer)  # type: ignore[arg-type]
                for server in servers:
                    for _ in range(4):  # a connection each, so both workers answer
                        page = httpx.get(server.url + path)
                        assert f"Round {round_}." in page.text, (round_, server.url)
                    assert f"Round {round_}." in client.get(server.url + path).text
    finally:
        for server in servers:
            stop_server(server)
    assert not any(live for _, live in _watchers(engine).values())  # they left


def test_each_worker_takes_its_lease_at_start_before_any_page_is_asked_for(
    settings, engine, tmp_path
) -> None:
    """The first readers after a restart find the watchers trusted already: each worker
    starts its own when the server starts, not at its first request."""
    _postgresql(engine)
    server = start_server(settings, tmp_path, workers=2)  # asks /healthz only, not a page
    try:
        deadline = time.monotonic() + 30
        while sum(live for _, live in _watchers(engine).values()) < 2:
            assert time.monotonic() < deadline, _watchers(engine)
            time.sleep(0.05)
    finally:
        stop_server(server)
    assert not any(live for _, live in _watchers(engine).values())  # they left


def test_serve_gives_its_workers_one_copy_and_removes_it_at_exit(
    settings, engine, tmp_path
) -> None:
    """`workshop serve` on PostgreSQL: its workers fill one local copy of the pages they read
    (app/pagestore.py), made at start and gone when it stops."""
    _postgresql(engine)
    renderer = Renderer.for_settings(settings)
    post = _stored_post(engine, renderer)
    temp = tmp_path / "temp"
    temp.mkdir()
    site = {"WORKSHOP_SITE_URL": SITE_URL, "WORKSHOP_SITE_NAME": settings.site_name}
    site["TMPDIR"] = str(temp)
    server = start_server(settings, tmp_path, workers=2, **site)
    try:
        (copy,) = temp.glob("workshop-pages-*/pages.sqlite")
        path = f"/read/{post.id}/{post.slug}"
        deadline = time.monotonic() + 30
        while sum(live for _, live in _watchers(engine).values()) < 2:  # each worker's watcher
            assert time.monotonic() < deadline, _watchers(engine)
            time.sleep(0.05)
        for _ in range(4):  # a connection each: a trusted worker keeps the page it read
            assert httpx.get(server.url + path).status_code == 200
        with sqlite3.connect(copy) as kept:
            assert kept.execute("SELECT post_id FROM pages").fetchall() == [(post.id,)]
    finally:
        stop_server(server)
    assert not list(temp.glob("workshop-pages-*"))


def _stored_posts(engine: Engine, renderer: Renderer, count: int) -> list[posts.Post]:
    """Posts published one after the other, each with its stored page."""
    made = [add_post(engine, cycle=7000 + n, title=f"Essay {n}") for n in range(count)]
    with write_session(engine) as session:
        essaypage.store_pages(session, renderer, {p.id for p in made})  # type: ignore[misc]
        session.commit()
    return made


def test_a_notice_names_the_posts_whose_pages_its_write_changed(engine) -> None:
    _postgresql(engine)
    import psycopg

    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    version = _version(engine)  # watchers already hold it: nothing moves for them
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(f"LISTEN {watch.CHANNEL}")
        for pages in ({3, 1}, set(range(1, 5000)), None):
            with write_session(engine) as session:
                if pages is not None:
                    watch.note_pages(session, pages)
                watch.notify(session, version)
                session.commit()
        heard = [n.payload for n in listener.notifies(timeout=5, stop_after=3)]
    # Listed; too many to fit in a notice: any; none noted: any (as a writer outside would).
    assert heard == [f"{version}:1,3", f"{version}:*", f"{version}"]


def test_a_worker_on_a_host_named_by_digits_is_not_taken_for_a_version(engine, monkeypatch) -> None:
    """Each watcher's probe goes to every listener: from a host whose name is all digits (a
    container's id) its payload, host:pid:token, began like a notice. Heard as version
    123456789012, it froze the worker there: every real notice was older, and pages edited
    after it were served stale."""
    _postgresql(engine)

    async def scenario() -> tuple[int, int, int]:
        first = watch.Watcher(engine)
        monkeypatch.setattr(watch.socket, "gethostname", lambda: "123456789012")
        second = watch.Watcher(engine)
        try:
            await _trusted(first)
            await _trusted(second)  # its probe went out to every listener, the first too
            await asyncio.sleep(0.2)
            held = first.version
            await asyncio.to_thread(add_post, engine)  # acknowledged: both heard it
            return held, first.version, second.version
        finally:
            await first.close()
            await second.close()

    before = _version(engine)
    held, first, second = asyncio.run(scenario())
    assert held == before
    assert first == second == _version(engine) > before


def test_a_page_no_write_changed_is_answered_from_the_copy_across_writes(
    engine, settings, tmp_path
) -> None:
    """The machine's copy keeps a page through writes that did not change it: after a new
    edit of the newest essay, the oldest essay's page is answered from the copy, no query;
    the edited essay's page is read again, and is the new one."""
    _postgresql(engine)
    renderer = Renderer.for_settings(settings)
    oldest, *_, newest = _stored_posts(engine, renderer, 4)
    pages = StoredPages(engine, renderer.page_key, local=LocalPages(tmp_path / "p.sqlite", 100))
    asked = _count_queries(pages)

    async def scenario() -> tuple[bytes | None, bytes | None, dict[int, int]]:
        try:
            watcher = watch.for_engine(engine)
            await _trusted(watcher)
            await pages.get(oldest.id)  # type: ignore[arg-type]
            await pages.get(newest.id)  # type: ignore[arg-type]
            await asyncio.to_thread(_edit, engine, renderer, newest, "Minds now agree: later.")
            kept = await pages.get(oldest.id)  # type: ignore[arg-type]
            edited = await pages.get(newest.id)  # type: ignore[arg-type]
            return kept.page, edited.page, dict(watcher.changed)
        finally:
            await pages.close()

    kept, edited, changed = asyncio.run(scenario())
    assert kept is not None and b"Essay 0" in kept
    assert edited is not None and b"Minds now agree: later." in edited
    assert newest.id in changed and oldest.id not in changed
    assert asked == [[oldest.id], [newest.id], [newest.id]]  # the oldest read once only


def test_after_a_write_outside_workshop_no_page_kept_before_it_is_answered(
    engine, settings, tmp_path
) -> None:
    """A version moved without a notice naming its pages (an older Workshop's notice, or SQL
    by hand with none at all): the copy answers only pages read since."""
    _postgresql(engine)
    renderer = Renderer.for_settings(settings)
    (post,) = _stored_posts(engine, renderer, 1)
    pages = StoredPages(engine, renderer.page_key, local=LocalPages(tmp_path / "p.sqlite", 100))
    asked = _count_queries(pages)

    def bump(notice: bool) -> int:
        with write_session(engine) as session:
            version = session.execute(
                text(
                    "UPDATE site_state SET value = value + 1"
                    " WHERE name = 'content_version' RETURNING value"
                )
            ).scalar_one()
            if notice:  # the version alone, as before notices named pages
                session.execute(
                    text("SELECT pg_notify(:c, :v)"), {"c": watch.CHANNEL, "v": str(version)}
                )
            session.commit()
        return int(version)

    async def until(watcher: watch.Watcher, version: int) -> None:
        for _ in range(500):
            if watcher.version >= version and watcher.pages_known >= version:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the watcher never caught up with version {version}")

    async def scenario() -> None:
        try:
            watcher = watch.for_engine(engine)
            await _trusted(watcher)
            await pages.get(post.id)  # type: ignore[arg-type]  # read, kept in the copy
            for notice in (True, False):
                await until(watcher, await asyncio.to_thread(bump, notice))
                assert watcher.pages_from == watcher.version  # the record starts again
                await pages.get(post.id)  # type: ignore[arg-type]
        finally:
            await pages.close()

    asyncio.run(scenario())
    assert asked == [[post.id]] * 3  # read again after each
