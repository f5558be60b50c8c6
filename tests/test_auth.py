"""Bearer authentication of API writes and the failed-authentication limit."""

import pytest
from conftest import add_post, post_json
from conftest import test_settings as make_settings
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlmodel import Session

from app.main import create_app
from app.models import AuthFailure, Post

API = "/api/v1/posts"


def count(engine) -> int:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        return int(session.execute(select(func.count()).select_from(Post)).scalar_one())


def assert_problem(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return response.json()


# --- authentication -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", API), ("PUT", f"{API}/1"), ("DELETE", f"{API}/1")],
)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wk_unknown", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not-even-prefixed"],
)
def test_every_write_needs_a_valid_token(client, engine, method, path, authorization):
    add_post(engine, post_id=1)
    headers = {"Authorization": authorization} if authorization else {}
    response = client.request(method, path, json=post_json(title="Intruder"), headers=headers)
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert client.get(f"{API}/1").json()["title"] != "Intruder"
    assert count(engine) == 1


def test_failed_authentications_get_429_after_the_limit(settings, engine, token):
    app = create_app(make_settings(settings.database_url, auth_fail_limit=3))
    with TestClient(app, client=("203.0.113.7", 5000)) as attacker:
        for _ in range(3):
            assert (
                attacker.post(
                    API, json=post_json(), headers={"Authorization": "Bearer wk_guess"}
                ).status_code
                == 401
            )
        locked = attacker.post(API, json=post_json(), headers={"Authorization": "Bearer wk_guess"})
        assert_problem(locked, 429)
        assert 1 <= int(locked.headers["retry-after"]) <= settings.auth_fail_window_seconds
        # Locked out even with the right token: a correct guess must not be told apart.
        assert (
            attacker.post(
                API, json=post_json(), headers={"Authorization": f"Bearer {token}"}
            ).status_code
            == 429
        )
    with TestClient(app, client=("198.51.100.9", 5000)) as engine_client:
        ok = engine_client.post(API, json=post_json(), headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 201
        for _ in range(5):  # successes never count
            assert (
                engine_client.post(
                    API, json=post_json(), headers={"Authorization": f"Bearer {token}"}
                ).status_code
                == 200
            )
    with Session(engine) as session:
        assert session.get(AuthFailure, "203.0.113.7").failures == 3  # type: ignore[union-attr]
        assert session.get(AuthFailure, "198.51.100.9") is None
    app.state.engine.dispose()


def test_a_second_app_on_the_same_database_sees_the_count(settings):
    """Counts live in the database: another worker (another app) enforces the same limit."""
    first = create_app(make_settings(settings.database_url, auth_fail_limit=2))
    second = create_app(make_settings(settings.database_url, auth_fail_limit=2))
    bad = {"Authorization": "Bearer wk_guess"}
    with (
        TestClient(first, client=("203.0.113.8", 1)) as a,
        TestClient(second, client=("203.0.113.8", 2)) as b,
    ):
        assert a.post(API, json=post_json(), headers=bad).status_code == 401
        assert b.post(API, json=post_json(), headers=bad).status_code == 401
        assert a.post(API, json=post_json(), headers=bad).status_code == 429
        assert b.post(API, json=post_json(), headers=bad).status_code == 429
    first.state.engine.dispose()
    second.state.engine.dispose()


def test_x_forwarded_for_is_honoured_only_from_trusted_proxies(settings, token):
    bad = {"Authorization": "Bearer wk_guess"}
    proxied = create_app(
        make_settings(settings.database_url, auth_fail_limit=1, trusted_proxies="10.0.0.0/8")
    )
    with TestClient(proxied, client=("10.0.0.2", 1)) as via_proxy:
        hops = {"X-Forwarded-For": "192.0.2.50, 10.0.0.9"}  # client, then an inner proxy
        assert via_proxy.post(API, json=post_json(), headers={**bad, **hops}).status_code == 401
        assert via_proxy.post(API, json=post_json(), headers={**bad, **hops}).status_code == 429
        # Another client behind the same proxy is not locked out.
        good = {"Authorization": f"Bearer {token}", "X-Forwarded-For": "192.0.2.51"}
        assert via_proxy.post(API, json=post_json(), headers=good).status_code == 201
    with TestClient(proxied, client=("192.0.2.99", 1)) as direct:
        # Not a trusted proxy: its X-Forwarded-For is ignored, so it cannot pose as another client.
        spoof = {**bad, "X-Forwarded-For": "192.0.2.77"}
        assert direct.post(API, json=post_json(), headers=spoof).status_code == 401
        assert (
            direct.post(
                API, json=post_json(), headers={**bad, "X-Forwarded-For": "192.0.2.78"}
            ).status_code
            == 429
        )
    proxied.state.engine.dispose()


def test_last_used_is_recorded(client, auth, engine):
    from app import tokens

    assert tokens.list_tokens(engine)[0].last_used_at is None
    client.post(API, json=post_json(), headers=auth)
    assert tokens.list_tokens(engine)[0].last_used_at is not None
