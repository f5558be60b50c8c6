"""`workshop token create/list/revoke` against the test database, and their effect on the API."""

import re

import pytest
from click.testing import CliRunner
from conftest import post_json
from sqlalchemy import text
from sqlmodel import Session

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
