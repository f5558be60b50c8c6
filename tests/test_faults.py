"""Faults survived, nothing acknowledged lost: a killed worker, a database outage, a database
that stops answering, a held SQLite write lock, a full disk. Every refusal is a 503/507 problem
with Retry-After, never a 500."""

import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from glob import glob
from pathlib import Path

import httpx
import psycopg
import pytest
from conftest import (
    IN_CI,
    PG_URL,
    add_post,
    post_json,
    start_server,
    stop_server,
    test_settings,
)
from sqlalchemy import make_url
from topology import free_port, worker_pids

from app import db, tokens

sqlite_only = pytest.mark.skipif(bool(PG_URL), reason="SQLite-specific fault")


def engine_post(
    urls: list[str], body: dict, headers: dict[str, str], first: int = 0
) -> httpx.Response:
    """POST as the debate engine does: on a connection error or a 5xx, send the very same request
    again, to the next host."""
    for attempt in range(200):
        url = urls[(first + attempt) % len(urls)]
        try:
            reply = httpx.post(url + "/api/v1/posts", json=body, headers=headers, timeout=10)
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        if reply.status_code < 500:
            return reply
        time.sleep(0.05)
    raise AssertionError(f"cycle {body.get('cycle')} was never acknowledged")


def test_kill_9_of_a_worker_mid_stream_loses_and_duplicates_nothing(
    settings, engine, tmp_path
) -> None:
    token = tokens.create_token(engine, "engine")
    headers = {"Authorization": f"Bearer {token}"}
    with ThreadPoolExecutor(2) as pool:  # started side by side: each takes a while to import
        a, b = pool.map(lambda n: start_server(settings, tmp_path, workers=n), (2, 1))
    try:
        urls = [a.url, b.url]
        cycles = list(range(5000, 5020))
        acknowledged: dict[int, int] = {}
        errors: list[BaseException] = []

        def stream(mine: list[int]) -> None:
            try:
                for cycle in mine:
                    body = post_json(cycle=cycle, title=f"Essay of Cycle {cycle}")
                    reply = engine_post(urls, body, headers, first=cycle)
                    assert reply.status_code in {200, 201}, reply.text
                    acknowledged[cycle] = reply.json()["id"]
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=stream, args=(cycles[i::2],)) for i in range(2)]
        for t in threads:
            t.start()
        while len(acknowledged) < 6 and not errors:
            time.sleep(0.01)
        victims = worker_pids(a.process.pid)
        assert victims, "no uvicorn worker found under host A"
        os.kill(victims[0], signal.SIGKILL)
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert sorted(acknowledged) == cycles

        listed = httpx.get(b.url + "/api/v1/posts", params={"limit": 100}).json()["items"]
        stored = [(p["cycle"], p["id"]) for p in listed]
        assert sorted(stored) == sorted(acknowledged.items())  # each exactly once, same id
    finally:
        stop_server(a)
        stop_server(b)


# --- PostgreSQL restarted under load ---------------------------------------------------------


class PrivatePostgres:
    """A throwaway PostgreSQL server of our own (the shared test server must not be restarted)."""

    def __init__(self, bindir: str, directory: Path) -> None:
        self.bindir, self.directory, self.port = bindir, directory, free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, command: str) -> None:
        subprocess.run(
            ["su", "postgres", "-c", command], check=True, capture_output=True, timeout=60
        )

    def init(self) -> None:
        self._as_postgres(
            f"{self.bindir}/initdb -D {self.directory}/data -A trust -U postgres --no-sync"
        )
        self.start()

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.directory} -c fsync=off"
        data, log = self.directory / "data", self.directory / "log"
        self._as_postgres(f"{self.bindir}/pg_ctl -D {data} -l {log} -w -o '{options}' start")

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(f"{self.bindir}/pg_ctl -D {self.directory}/data -m {mode} -w stop")

    def freeze(self) -> None:
        """Stop every process of the server (SIGSTOP), as a paused host would: its kernel still
        accepts connections and acknowledges what is sent, and nothing answers."""
        postmaster, children = self._processes()
        os.kill(postmaster, signal.SIGSTOP)  # first: it starts no new backend meanwhile
        for pid in children:
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        postmaster, children = self._processes()
        for pid in children:
            os.kill(pid, signal.SIGCONT)
        os.kill(postmaster, signal.SIGCONT)

    def _processes(self) -> tuple[int, list[int]]:
        postmaster = int((self.directory / "data" / "postmaster.pid").read_text().split()[0])
        children = []
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text()
            except (OSError, ValueError):
                continue  # not a process, or it ended meanwhile
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == postmaster:
                children.append(int(entry.name))
        return postmaster, children


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    if not PG_URL:
        pytest.skip("PostgreSQL outage test runs in the PostgreSQL suite")
    bins = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
    problem = (
        "no initdb under /usr/lib/postgresql"
        if not bins
        else "starting a private PostgreSQL needs root (su postgres)"
        if os.geteuid() != 0
        else None
    )
    if problem:
        pytest.fail(problem) if IN_CI else pytest.skip(problem)
    directory = Path(tempfile.mkdtemp(prefix="workshop-pg-"))
    shutil.chown(directory, "postgres")
    server = PrivatePostgres(str(Path(bins[-1]).parent), directory)
    try:
        server.init()
        yield server
    finally:
        try:
            server.thaw()  # if a test froze it
        except (OSError, ValueError):
            pass  # not running
        try:
            server.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(directory, ignore_errors=True)


def test_postgres_restart_under_load_is_503_then_served_again(private_postgres, tmp_path) -> None:
    settings = test_settings(private_postgres.url)
    db.upgrade(settings)
    engine = db.make_engine(settings)
    headers = {"Authorization": f"Bearer {tokens.create_token(engine, 'engine')}"}
    add_post(engine)
    engine.dispose()
    host = start_server(settings, tmp_path)
    seen: list[int] = []
    stop = threading.Event()

    problems: list[str] = []

    def load() -> None:
        cycle = 6000
        while not stop.is_set():
            cycle += 1
            body = post_json(cycle=cycle)
            for reply in (
                httpx.get(host.url + "/api/v1/posts", timeout=10),
                httpx.post(host.url + "/api/v1/posts", json=body, headers=headers, timeout=10),
            ):
                seen.append(reply.status_code)
                if reply.status_code >= 500 and not (
                    reply.status_code == 503 and reply.headers.get("retry-after")
                ):
                    problems.append(f"{reply.status_code} {reply.headers} {reply.text}")
            time.sleep(0.02)

    loader = threading.Thread(target=load, daemon=True)
    try:
        loader.start()
        while 201 not in seen and loader.is_alive():
            time.sleep(0.02)
        private_postgres.stop("fast")
        down_post = httpx.post(
            host.url + "/api/v1/posts", json=post_json(cycle=7000), headers=headers
        )
        down_get = httpx.get(host.url + "/api/v1/posts")
        for reply in (down_post, down_get):
            assert reply.status_code == 503, reply.text
            assert reply.headers["content-type"] == "application/problem+json"
            assert int(reply.headers["retry-after"]) > 0
        assert httpx.get(host.url + "/readyz").status_code == 503
        assert httpx.get(host.url + "/healthz").status_code == 200

        private_postgres.start()
        count = len(seen)
        while seen[count:].count(201) < 2 and loader.is_alive():
            time.sleep(0.02)
        assert (
            httpx.post(
                host.url + "/api/v1/posts", json=post_json(cycle=7000), headers=headers
            ).status_code
            == 201
        )
        assert httpx.get(host.url + "/readyz").status_code == 200
        assert host.process.poll() is None  # the same Workshop process throughout
    finally:
        stop.set()
        loader.join(20)
        stop_server(host)
    assert not problems, problems
    assert 503 in seen and 500 not in seen


# --- PostgreSQL that stops answering ----------------------------------------------------------


def test_a_frozen_postgres_is_503_within_the_bound_then_served_again(
    private_postgres, tmp_path
) -> None:
    """The server's processes stopped (SIGSTOP) under established connections: the kernel keeps
    them open, so nothing but the app's own bound ends a wait (`app/pgwaits.py`). Readers and
    the engine get 503 with Retry-After instead of waiting without end; a write caught waiting
    is not acknowledged and not stored, and its retry with the same Idempotency-Key stores it
    once; after SIGCONT the same process serves again by itself."""
    settings = test_settings(private_postgres.url)
    db.upgrade(settings)
    engine = db.make_engine(settings)
    headers = {"Authorization": f"Bearer {tokens.create_token(engine, 'engine')}"}
    post = add_post(engine)
    engine.dispose()
    host = start_server(settings, tmp_path, WORKSHOP_DB_TIMEOUT_SECONDS="2")
    essay = f"{host.url}/read/{post.id}/{post.slug}"
    html = {"Accept": "text/html"}
    keyed = {**headers, "Idempotency-Key": "frozen-1"}
    body = post_json(cycle=None, title="Written While the Database Slept")
    writer: list[httpx.Response] = []
    held = psycopg.connect(private_postgres.url)
    try:
        # Established connections everywhere: the pool, the event loop's reads, the watcher,
        # the claims lock.
        assert httpx.get(essay, headers=html).status_code == 200
        assert httpx.get(host.url + "/api/v1/posts").status_code == 200
        warm = post_json(cycle=7000, title="Written Before")
        keyed_warm = {**headers, "Idempotency-Key": "warm"}
        assert (
            httpx.post(host.url + "/api/v1/posts", json=warm, headers=keyed_warm).status_code == 201
        )

        # A write caught mid-transaction: another writer holds the writers' lock, the server
        # freezes while this one waits for it.
        held.execute("SELECT value FROM site_state WHERE name = 'content_version' FOR UPDATE")
        waiting = threading.Thread(
            target=lambda: writer.append(
                httpx.post(host.url + "/api/v1/posts", json=body, headers=keyed, timeout=60)
            )
        )
        waiting.start()
        deadline = time.monotonic() + 30
        while not held.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        ).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "the write never waited for the lock"
            time.sleep(0.05)
        private_postgres.freeze()
        # The write gives up (2 s), and its claim cannot be released either (2 s more). By then
        # the worker's lease on the content version has ended too (`app/watch.py`): until it
        # does, pages it holds are still answered from memory, as they should be.
        waiting.join(60)
        assert not waiting.is_alive(), "the write is still waiting"

        # Each answers at all, and with 503 (generous: the bound is 2 s, a connection 5 s).
        reader = httpx.get(essay, headers=html, timeout=60)
        assert reader.headers["content-type"].startswith("text/html")
        api = httpx.get(host.url + "/api/v1/posts", timeout=60)
        another = httpx.post(
            host.url + "/api/v1/posts", json=post_json(cycle=7001), headers=headers, timeout=60
        )
        for reply in (reader, api, another, *writer):
            assert reply.status_code == 503, reply.text
            assert int(reply.headers["retry-after"]) > 0
        for reply in (api, another, *writer):
            assert reply.headers["content-type"] == "application/problem+json"
        assert httpx.get(host.url + "/readyz", timeout=60).status_code == 503
        assert httpx.get(host.url + "/healthz", timeout=60).status_code == 200

        private_postgres.thaw()
        held.rollback()  # the other writer finishes: the frozen write's transaction was dropped
        deadline = time.monotonic() + 30
        while httpx.get(essay, headers=html).status_code != 200:
            assert time.monotonic() < deadline, "not served again after the server woke"
            time.sleep(0.2)
        assert httpx.get(host.url + "/api/v1/posts").status_code == 200
        assert httpx.get(host.url + "/readyz").status_code == 200

        # The engine retries with the same key: stored once (at once, not after the minute a
        # claim of a live process is otherwise kept), and the answer replayed after that.
        deadline = time.monotonic() + 30
        retried = engine_post([host.url], body, keyed)
        while retried.status_code == 409 and "retry-after" in retried.headers:
            assert time.monotonic() < deadline, retried.text
            time.sleep(int(retried.headers["retry-after"]))
            retried = engine_post([host.url], body, keyed)
        assert retried.status_code == 201, retried.text
        replayed = engine_post([host.url], body, keyed)
        assert replayed.headers.get("idempotent-replayed") == "true"
        assert replayed.json()["id"] == retried.json()["id"]
        assert host.process.poll() is None  # the same process throughout
    finally:
        held.close()
        stop_server(host)
    with psycopg.connect(private_postgres.url) as conn:
        stored = conn.execute("SELECT cycle, title FROM posts ORDER BY id").fetchall()
    # The refused POST of cycle 7001 stored nothing; the keyed one is there once.
    assert stored == [(900, post.title), (7000, "Written Before"), (None, body["title"])]


# --- SQLite: a held write lock, a full disk ---------------------------------------------------


def _sqlite_file(settings) -> str:
    return str(make_url(settings.database_url).database)


@sqlite_only
def test_sqlite_write_lock_makes_writers_wait_then_503_and_spares_readers(
    settings, engine, tmp_path
) -> None:
    post = add_post(engine)
    headers = {"Authorization": f"Bearer {tokens.create_token(engine, 'engine')}"}
    host = start_server(settings, tmp_path, WORKSHOP_SQLITE_BUSY_TIMEOUT_MS="1500")
    lock = sqlite3.connect(_sqlite_file(settings), isolation_level=None)
    try:
        # A writer that meets the lock waits for it: released within the busy timeout, it succeeds.
        lock.execute("BEGIN IMMEDIATE")
        replies: list[httpx.Response] = []
        waiter = threading.Thread(
            target=lambda: replies.append(
                httpx.post(
                    host.url + "/api/v1/posts",
                    json=post_json(cycle=8001),
                    headers=headers,
                    timeout=30,
                )
            )
        )
        waiter.start()
        time.sleep(0.2)
        lock.execute("ROLLBACK")
        waiter.join(30)
        assert replies[0].status_code == 201, replies[0].text

        # Held past the busy timeout: 503 with Retry-After, nothing stored; readers carry on.
        lock.execute("BEGIN IMMEDIATE")
        refused = httpx.post(
            host.url + "/api/v1/posts", json=post_json(cycle=8002), headers=headers, timeout=30
        )
        assert refused.status_code == 503 and refused.headers["retry-after"], refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert httpx.get(f"{host.url}/read/{post.id}/{post.slug}").status_code == 200
        assert httpx.get(f"{host.url}/api/v1/posts/{post.id}").status_code == 200
        lock.execute("ROLLBACK")
        assert httpx.get(f"{host.url}/cycle/8002", follow_redirects=False).status_code == 404
        again = httpx.post(host.url + "/api/v1/posts", json=post_json(cycle=8002), headers=headers)
        assert again.status_code == 201
    finally:
        lock.close()
        stop_server(host)


@sqlite_only
def test_a_database_file_deleted_under_the_server_takes_no_write_it_would_lose(
    settings, engine, tmp_path
) -> None:
    """The workers' open connections still reach the deleted file: SQLite took writes into it
    and answered 201, and they were gone at the next start; a new connection made an empty
    database in its place."""
    headers = {"Authorization": f"Bearer {tokens.create_token(engine, 'engine')}"}
    host = start_server(settings, tmp_path)
    try:
        first = httpx.post(host.url + "/api/v1/posts", json=post_json(cycle=1), headers=headers)
        assert first.status_code == 201, first.text
        for path in glob(str(_sqlite_file(settings)) + "*"):
            if os.path.isfile(path):
                os.remove(path)
        for cycle in (2, 3):
            refused = httpx.post(
                host.url + "/api/v1/posts", json=post_json(cycle=cycle), headers=headers
            )
            assert refused.status_code == 503, refused.text
            assert refused.headers["content-type"] == "application/problem+json"
        assert httpx.get(host.url + "/readyz").status_code == 503
        assert not os.path.exists(_sqlite_file(settings))  # no empty database made in its place
    finally:
        stop_server(host)


@pytest.fixture
def small_filesystem() -> Iterator[Path]:
    mountpoint = Path(tempfile.mkdtemp(prefix="workshop-tmpfs-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mountpoint)], capture_output=True
    )
    if mounted.returncode != 0:
        mountpoint.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        mountpoint.rmdir()


@sqlite_only
def test_full_disk_is_a_clear_507_and_the_database_stays_intact(
    settings, small_filesystem, tmp_path
) -> None:
    path = small_filesystem / "workshop.db"
    shutil.copyfile(_sqlite_file(settings), path)
    full_settings = test_settings(f"sqlite:///{path}")
    engine = db.make_engine(full_settings)
    headers = {"Authorization": f"Bearer {tokens.create_token(engine, 'engine')}"}
    early = [
        add_post(engine, cycle=9000 + i, title=f"Before the Disk Filled {i}") for i in range(3)
    ]
    engine.dispose()
    host = start_server(full_settings, tmp_path)
    try:
        statuses = []
        for i in range(40):
            # ~155 KB of text (under the body limit) that does not compress away: stored with its
            # HTML it fills 3 MiB in a few posts.
            body = "\n\n".join(f"Paragraph {i}.{n}: " + os.urandom(300).hex() for n in range(250))
            reply = httpx.post(
                host.url + "/api/v1/posts",
                headers=headers,
                timeout=30,
                json=post_json(cycle=9100 + i, title=f"Filling {i}", body=body),
            )
            statuses.append(reply.status_code)
            if reply.status_code != 201:
                break
        assert statuses[-1] == 507, statuses
        assert reply.headers["content-type"] == "application/problem+json"
        assert "disk is full" in reply.json()["detail"]
        assert 500 not in statuses
        for post in early:
            assert httpx.get(f"{host.url}/read/{post.id}/{post.slug}").status_code == 200
    finally:
        stop_server(host)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        cycles = {row[0] for row in conn.execute("SELECT cycle FROM posts")}
    assert {9000, 9001, 9002} <= cycles
    assert len(cycles) == 3 + statuses.count(201)  # the refused post left nothing behind
