"""Shared fixtures: a fresh real database per test (SQLite file, or PostgreSQL when
WORKSHOP_TEST_DATABASE_URL points at a server), the app on it, and a real uvicorn server."""

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, make_url, update
from sqlmodel import col

from app import db, posts
from app.config import Settings
from app.main import create_app
from app.models import PostIn, SiteState

PG_URL = os.environ.get("WORKSHOP_TEST_DATABASE_URL", "")
IN_CI = os.environ.get("CI", "").lower() == "true"
SITE_URL = "http://testserver"


def pytest_report_header() -> str:
    return f"database: {'PostgreSQL ' + PG_URL if PG_URL else 'SQLite'}; CI={IN_CI}"


def test_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "site_url": SITE_URL,
        "site_name": "Workshop Test",
        "timezone": "America/Los_Angeles",
        "log_json": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


# --- databases --------------------------------------------------------------------------------


def _pg_admin_url() -> str:
    url = make_url(PG_URL)
    return url.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False
    )


@pytest.fixture(scope="session")
def template_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Migrate once; each test then copies this template (a file copy or CREATE ... TEMPLATE)."""
    if PG_URL:
        name = f"workshop_tpl_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(_pg_admin_url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
        db.upgrade(test_settings(url))
        yield name
        with psycopg.connect(_pg_admin_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        path = tmp_path_factory.mktemp("template") / "template.db"
        db.upgrade(test_settings(f"sqlite:///{path}"))
        yield str(path)


@contextmanager
def fresh_database(
    template_database: str, directory: Path, filename: str = "workshop.db"
) -> Iterator[str]:
    """An empty, migrated database of the kind under test, dropped afterwards."""
    if PG_URL:
        name = f"workshop_t_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(_pg_admin_url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
        with psycopg.connect(_pg_admin_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        path = directory / filename
        shutil.copyfile(template_database, path)
        yield f"sqlite:///{path}"


@pytest.fixture
def database_url(template_database: str, tmp_path: Path) -> Iterator[str]:
    with fresh_database(template_database, tmp_path) as url:
        yield url


@pytest.fixture
def second_database_url(template_database: str, tmp_path: Path) -> Iterator[str]:
    """Another empty database, e.g. to restore a backup or import an export into."""
    with fresh_database(template_database, tmp_path, "second.db") as url:
        yield url


@pytest.fixture
def settings(database_url: str) -> Settings:
    return test_settings(database_url)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = db.make_engine(settings)
    yield engine
    engine.dispose()


@pytest.fixture
def app(settings: Settings):  # type: ignore[no-untyped-def]
    app = create_app(settings)
    yield app
    app.state.engine.dispose()


@pytest.fixture
def client(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app, base_url=SITE_URL, follow_redirects=False) as client:
        yield client


@pytest.fixture
def uncached_client(settings: Settings) -> Iterator[TestClient]:
    """The app with the response cache off: what the routes themselves answer."""
    app = create_app(test_settings(settings.database_url, response_cache=False))
    with TestClient(app, base_url=SITE_URL, follow_redirects=False) as client:
        yield client
    app.state.engine.dispose()


# --- content ----------------------------------------------------------------------------------


def sample_input(**overrides: object) -> PostIn:
    doc: dict[str, object] = {
        "title": "Breadth Is Thinning Under a Calm Index",
        "body": "The minds argued about *breadth*.\n\nFlow saw outflows; Macro did not.",
        "cycle": 900,
        "published_at": "2026-04-05T15:04:00Z",
        "author": "Workshop",
        "debate": {
            "outcome": "split",
            "conviction": 0.42,
            "minds": [
                {"name": "Macro", "confidence": 0.35},
                {"name": "Flow", "confidence": 0.6},
                {"name": "Contrarian", "confidence": 0.3},
            ],
        },
        "tags": ["QQQ", "breadth"],
        "stories": [{"title": "Narrow Leadership", "status": "developing"}],
    }
    doc.update(overrides)
    return PostIn.model_validate(doc)


def add_post(engine: Engine, post_id: int | None = None, **overrides: object) -> posts.Post:
    """Create a post through the service layer (the same path the API and importer use)."""
    with db.write_session(engine) as session:
        result = posts.create_post(session, sample_input(**overrides), "Workshop", post_id=post_id)
        session.expunge(result.post)
        return result.post


def one_published_one_withdrawn(engine: Engine) -> tuple[posts.Post, posts.Post]:
    """A published essay (cycle 900) and a withdrawn one (cycle 901)."""
    post = add_post(engine)
    gone = add_post(engine, cycle=901, title="Withdrawn")
    with db.write_session(engine) as session:
        posts.delete_post(session, gone.id)  # type: ignore[arg-type]
    return post, gone


def as_if_written_a_minute_ago(engine: Engine) -> None:
    """A fixture writes faster than one essay a second, which puts the site's change time
    ahead of the clock (each write moves it a second on), and feeds hold `Last-Modified` back
    until the clock has passed it: as if those writes had been made a minute ago."""
    ago = int(time.time()) - 60 - posts.CHANGED_AT_EPOCH
    with db.write_session(engine) as session:
        session.execute(
            update(SiteState)
            .where(col(SiteState.name) == posts.CONTENT_CHANGED_AT, col(SiteState.value) > ago)
            .values(value=ago)
        )
        session.commit()


# --- a real server ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.process = process
        self.log = log


def start_server(settings: Settings, tmp_path: Path, workers: int = 1, **env: str) -> LiveServer:
    """`workshop serve` as an operator runs it, in its own process, on a free loopback port."""
    port = free_port()
    environ = {
        **os.environ,
        "WORKSHOP_DATABASE_URL": settings.database_url,
        "WORKSHOP_SITE_URL": f"http://127.0.0.1:{port}",
        "WORKSHOP_TIMEZONE": settings.timezone,
        **env,
    }
    log = tmp_path / f"server-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", str(workers)],
        env=environ,
        cwd=tmp_path,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return LiveServer(url, process, log)
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server did not start: {log.read_text()}")


def stop_server(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture
def live_server(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    server = start_server(settings, tmp_path)
    yield server
    stop_server(server)


# --- the ingest API ---------------------------------------------------------------------------


@pytest.fixture
def token(engine: Engine) -> str:
    """A fresh engine token, created the way `workshop token create` does."""
    from app import tokens

    return tokens.create_token(engine, "engine")


@pytest.fixture
def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post_json(**overrides: object) -> dict[str, object]:
    """A valid POST /api/v1/posts body (sample_input as the engine would send it)."""
    return sample_input(**overrides).model_dump(mode="json", exclude_none=True)
