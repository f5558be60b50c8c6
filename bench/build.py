"""Build benchmark archives through the post service, one batch per transaction (streaming)."""

import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from sqlalchemy import func, make_url, select
from sqlmodel import Session

from app import db, essaypage, posts
from app.config import Settings
from app.fragments import Renderer
from app.models import Post, PostIn
from bench.corpus import Corpus

DATA = Path(__file__).parent / "data"
BATCH = 250
PREPARE_WORKERS = 2  # processes generating essays and rendering their Markdown
# The site's public address, the same when the archive is built and when it is served (stored
# essay pages are finished with it), as behind a proxy: the server listens on a free port.
SITE_URL = "http://127.0.0.1:8000"


@dataclass
class Archive:
    size: int
    url: str  # a database the run may change (ingest): a copy of the built archive
    build_seconds: float | None  # None when an existing archive was reused (--keep)


def _settings(url: str) -> Settings:
    return Settings(_env_file=None, database_url=url, site_url=SITE_URL, log_json=False)  # type: ignore[call-arg]


def _count(url: str) -> int:
    engine = db.make_engine(_settings(url))
    try:
        with Session(engine) as session:
            return int(session.execute(select(func.count()).select_from(Post)).scalar_one())
    finally:
        engine.dispose()


def _prepare(args: tuple[int, int, int, int]) -> tuple[list[PostIn], list[posts.Prepared]]:
    """A worker process: generate one batch of essays and do its Markdown work."""
    size, seed, start, stop = args
    batch = list(Corpus(size, seed).essays(start, stop))
    return batch, posts.prepare(batch)


def _fill(url: str, size: int, seed: int) -> float:
    """Create `size` essays; returns the seconds it took (progress on stderr).

    Worker processes generate the essays and render their Markdown (`posts.prepare`); this
    process stores them in order through `posts.create_many` (slugs, minds, tags, stories and
    the stored page HTML), one transaction per batch, so ids are the same on every build.
    """
    settings = _settings(url)
    db.upgrade(settings)
    engine = db.make_engine(settings)
    render = Renderer.for_settings(settings)
    started = time.monotonic()
    jobs = [(size, seed, start, min(start + BATCH, size)) for start in range(0, size, BATCH)]
    done = 0
    try:
        with multiprocessing.get_context("spawn").Pool(PREPARE_WORKERS) as pool:
            for batch, prepared in pool.imap(_prepare, jobs):
                with db.write_session(engine) as session:
                    posts.create_many(session, batch, settings.author, render, prepared)
                done += len(batch)
                rate = done / (time.monotonic() - started)
                print(f"\r  built {done}/{size} essays, {rate:.0f}/s", end="", file=sys.stderr)
    finally:
        engine.dispose()
    print(file=sys.stderr)
    return time.monotonic() - started


def _store_pages(url: str) -> None:
    """An archive built before essay pages were stored, or by another build: upgrade it and
    store its pages (`workshop pages refresh`), once, in the kept archive."""
    settings = _settings(url)
    db.upgrade(settings)
    engine = db.make_engine(settings)
    try:
        stored = sum(essaypage.refresh_all(engine, Renderer.for_settings(settings)))
    finally:
        engine.dispose()
    if stored:
        print(f"  stored {stored} essay pages", file=sys.stderr)


def _pg_admin(url: str) -> str:
    return make_url(url).set(drivername="postgresql", database="postgres").render_as_string(False)


def _pg_db(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def prepare(size: int, database_url: str | None, keep: bool, seed: int = 7) -> Archive:
    """The built archive of `size` essays (reused with `keep`) and a fresh copy to run on."""
    seconds: float | None = None
    if database_url is None:
        DATA.mkdir(exist_ok=True)
        built = DATA / f"archive-{size}-s{seed}.db"
        if not (keep and built.exists() and _count(f"sqlite:///{built}") == size):
            for suffix in ("", "-wal", "-shm"):
                Path(f"{built}{suffix}").unlink(missing_ok=True)
            shutil.rmtree(f"{built}-pages", ignore_errors=True)  # its pack files
            seconds = _fill(f"sqlite:///{built}", size, seed)
        _store_pages(f"sqlite:///{built}")
        run = DATA / f"run-{size}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{run}{suffix}").unlink(missing_ok=True)
        shutil.rmtree(f"{run}-pages", ignore_errors=True)
        shutil.copyfile(built, run)
        shutil.copytree(f"{built}-pages", f"{run}-pages")  # the pack files (app/pagepack.py)
        # On disk before measuring: else the first checkpoint's fsync writes out the whole copy
        # (a 1 s stall of one ingest at 100,000 essays, which no live site has).
        for copied_path in [run, *Path(f"{run}-pages").iterdir()]:
            with open(copied_path, "rb+") as copied:
                os.fsync(copied.fileno())
        # And what storing the pages again wrote into the kept archive (2 GB of pack file at
        # 100,000 essays, after a template change): left to the kernel's writeback, it stalled
        # the first rows measured (304 p99s of 15-37 ms where the rest had 4).
        os.sync()
        return Archive(size, f"sqlite:///{run}", seconds)

    built_name, run_name = f"workshop_bench_{size}_s{seed}", f"workshop_bench_run_{size}"
    with psycopg.connect(_pg_admin(database_url), autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (built_name,)
        ).fetchone()
        if not (keep and exists and _count(_pg_db(database_url, built_name)) == size):
            conn.execute(f'DROP DATABASE IF EXISTS "{built_name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{built_name}"')
            seconds = _fill(_pg_db(database_url, built_name), size, seed)
        _store_pages(_pg_db(database_url, built_name))
        conn.execute(f'DROP DATABASE IF EXISTS "{run_name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{run_name}" TEMPLATE "{built_name}"')
    run_url = _pg_db(database_url, run_name)
    with psycopg.connect(
        make_url(run_url).set(drivername="postgresql").render_as_string(False), autocommit=True
    ) as conn:
        conn.execute("VACUUM ANALYZE")
        # On disk before measuring, as the SQLite copy: else the server's checkpointer writes
        # the copy out (gigabytes at 100,000 essays) over the first minutes of measurements.
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            print("bench: no right to CHECKPOINT; the first rows may see the copy written out")
    os.sync()  # and what the server wrote is on disk, not in the kernel's dirty pages
    return Archive(size, run_url, seconds)
