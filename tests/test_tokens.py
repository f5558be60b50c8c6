"""`workshop token create/list/revoke` against the test database, and their effect on the API."""

import re
import threading

import pytest
from click.testing import CliRunner
from conftest import post_json
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from app import db, tokens
from app.cli import main

API = "/api/v1/posts"


@pytest.fixture
def cli(settings, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("WORKSHOP_DATABASE_URL", settings.database_url)

    def run(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    return run


def test_create_prints_a_random_token_once_and_stores_only_its_hash(cli, engine):
    result = cli("token", "create", "engine")
    assert result.exit_code == 0
    token = result.stdout.strip()
    assert re.fullmatch(r"wk_[A-Za-z0-9_-]{43,}", token)  # 32 random bytes, base64url
    assert cli("token", "create", "engine2").stdout.strip() != token
    with Session(engine) as session:
        dump = repr(session.execute(text("SELECT * FROM api_tokens")).all())
    assert token not in dump and token.removeprefix("wk_") not in dump


def test_duplicate_name_is_refused(cli):
    cli("token", "create", "engine")
    result = CliRunner().invoke(main, ["token", "create", "engine"])
    assert result.exit_code != 0 and "already exists" in result.output


def test_list_shows_created_last_used_and_revoked(cli, client):
    token = cli("token", "create", "engine").stdout.strip()
    cli("token", "create", "spare")
    client.post(API, json=post_json(), headers={"Authorization": f"Bearer {token}"})
    cli("token", "revoke", "spare")
    lines = cli("token", "list").stdout.splitlines()
    assert lines[0].split() == ["NAME", "CREATED", "LAST", "USED", "REVOKED"]
    rows = {line.split()[0]: line for line in lines[1:]}
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    assert re.fullmatch(rf"engine\s+{stamp}\s+{stamp}\s+-", rows["engine"].strip())
    assert re.fullmatch(rf"spare\s+{stamp}\s+-\s+{stamp}", rows["spare"].strip())


def test_revoked_token_gets_401_at_the_next_request(cli, client, engine):
    token = cli("token", "create", "engine").stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    assert client.post(API, json=post_json(cycle=1), headers=headers).status_code == 201
    assert cli("token", "revoke", "engine").exit_code == 0
    response = client.post(API, json=post_json(cycle=2), headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["content-type"] == "application/problem+json"
    with Session(engine) as session:
        assert session.execute(text("SELECT count(*) FROM posts")).scalar_one() == 1


def test_revoking_an_unknown_token_fails_clearly(cli):
    result = CliRunner().invoke(main, ["token", "revoke", "nobody"])
    assert result.exit_code != 0 and "no token named 'nobody'" in result.output


def _rows_named(engine, name: str) -> list[tuple[object, ...]]:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        return list(
            session.execute(
                text("SELECT id, token_hash, revoked_at FROM api_tokens WHERE name = :name"),
                {"name": name},
            ).all()
        )


def test_a_revoked_name_can_be_created_again_and_only_the_new_token_works(cli, client, engine):
    """Rotation after a leak: revoke `engine`, create `engine` again; the leaked token stays
    refused, the new one works, and the list keeps both (the old one marked revoked)."""
    leaked = cli("token", "create", "engine").stdout.strip()
    assert cli("token", "revoke", "engine").exit_code == 0
    created = cli("token", "create", "engine")
    assert created.exit_code == 0
    fresh = created.stdout.strip()
    assert fresh.startswith("wk_") and fresh != leaked
    old = client.post(API, json=post_json(cycle=1), headers={"Authorization": f"Bearer {leaked}"})
    assert old.status_code == 401
    new = client.post(API, json=post_json(cycle=1), headers={"Authorization": f"Bearer {fresh}"})
    assert new.status_code == 201
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    rows = [line.strip() for line in cli("token", "list").stdout.splitlines()[1:]]
    assert len(rows) == 2
    assert re.fullmatch(rf"engine\s+{stamp}\s+-\s+{stamp}", rows[0])  # revoked, never used
    assert re.fullmatch(rf"engine\s+{stamp}\s+{stamp}\s+-", rows[1])  # live, just used


def test_revoke_takes_the_live_token_of_a_name_then_refuses(cli, client, engine):
    cli("token", "create", "engine")
    cli("token", "revoke", "engine")
    live = cli("token", "create", "engine").stdout.strip()
    assert cli("token", "revoke", "engine").exit_code == 0
    response = client.post(API, json=post_json(), headers={"Authorization": f"Bearer {live}"})
    assert response.status_code == 401
    before = _rows_named(engine, "engine")
    assert len(before) == 2 and all(revoked is not None for _, _, revoked in before)
    again = CliRunner().invoke(main, ["token", "revoke", "engine"])
    assert again.exit_code == 1
    assert again.output.strip().splitlines() == [
        "Error: no live token named 'engine': it is already revoked"
    ]
    assert _rows_named(engine, "engine") == before  # the refusal changed nothing


def test_a_second_live_token_with_a_name_is_refused_in_one_line(cli, engine):
    cli("token", "create", "engine")
    cli("token", "revoke", "engine")
    cli("token", "create", "engine")
    before = _rows_named(engine, "engine")
    result = CliRunner().invoke(main, ["token", "create", "engine"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == ["Error: a token named 'engine' already exists"]
    assert _rows_named(engine, "engine") == before


def test_creates_racing_for_one_name_leave_one_live_token(engine):
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def create() -> None:
        barrier.wait()
        try:
            tokens.create_token(engine, "engine")
            outcomes.append("created")
        except tokens.TokenNameTaken:
            outcomes.append("taken")
        except Exception as exc:  # anything else is the failure this test looks for
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created", "taken", "taken", "taken"]
    assert len(_rows_named(engine, "engine")) == 1


def test_the_loser_of_a_race_for_a_name_gets_the_one_line_error(cli, engine, settings):
    """Another create of the name commits between this create's check and its insert: the
    database's unique index refuses the insert, and the operator reads why, not a traceback.
    (SQLite takes its write lock before the check, so there the race cannot happen.)"""
    if settings.is_sqlite:
        pytest.skip("SQLite's write lock, taken at BEGIN, keeps the check and the insert together")
    rival_engine = db.make_engine(settings)
    raced: list[str] = []
    fired = threading.Event()  # once: the rival's own insert passes through here too

    def rival_first(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.startswith("INSERT INTO api_tokens") and not fired.is_set():
            fired.set()
            raced.append(tokens.create_token(rival_engine, "engine"))

    event.listen(Engine, "before_cursor_execute", rival_first)
    try:
        result = CliRunner().invoke(main, ["token", "create", "engine"])
    finally:
        event.remove(Engine, "before_cursor_execute", rival_first)
        rival_engine.dispose()
    assert len(raced) == 1
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == ["Error: a token named 'engine' already exists"]
    assert [row[1] for row in _rows_named(engine, "engine")] == [tokens.hash_token(raced[0])]


def test_0010_frees_revoked_names_in_a_database_with_tokens(engine, settings):
    """The upgrade keeps every token of a database made before it (the old constraint dropped,
    a table rebuild on SQLite); the downgrade keeps one row per name, a live one first."""
    db.downgrade(settings, "0009")
    live = tokens.create_token(engine, "engine")
    tokens.create_token(engine, "spare")
    tokens.revoke_token(engine, "spare")
    with pytest.raises(IntegrityError):  # the old schema: a name is taken for good
        with Session(engine) as session:
            session.execute(text("UPDATE api_tokens SET name = 'engine' WHERE name = 'spare'"))
    before = _all_rows(engine)
    db.upgrade(settings)
    assert _all_rows(engine) == before
    with Session(engine) as session:
        assert tokens.verify(session, live) is not None
    with pytest.raises(tokens.TokenNameTaken):
        tokens.create_token(engine, "engine")
    tokens.create_token(engine, "spare")
    for _ in range(2):  # a name with two revoked tokens and none live
        tokens.create_token(engine, "old")
        tokens.revoke_token(engine, "old")
    rows = _all_rows(engine)
    db.downgrade(settings, "0009")
    kept = [rows[0], rows[2], rows[4]]  # engine; spare's live token; old's later revoked one
    assert [row[1] for row in kept] == ["engine", "spare", "old"]
    assert _all_rows(engine) == kept
    db.upgrade(settings)
    assert db.is_at_head(engine) and _all_rows(engine) == kept


def _all_rows(engine) -> list[tuple[object, ...]]:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        return list(session.execute(text("SELECT * FROM api_tokens ORDER BY id")).all())
