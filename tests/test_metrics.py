"""/metrics counts requests and latency per route, essays ingested, refused authentications."""

from conftest import post_json
from prometheus_client.parser import text_string_to_metric_families


def samples(client) -> dict[tuple[str, frozenset], float]:
    text = client.get("/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_ingest_and_auth_outcomes_are_counted(client, auth) -> None:
    before = samples(client)
    assert client.post("/api/v1/posts", json=post_json(), headers=auth).status_code == 201
    assert client.post("/api/v1/posts", json=post_json(), headers=auth).status_code == 200
    bad = {"Authorization": "Bearer wk_wrong"}
    assert client.post("/api/v1/posts", json=post_json(), headers=bad).status_code == 401
    assert client.post("/api/v1/posts", json=post_json()).status_code == 401
    after = samples(client)
    assert delta(before, after, "workshop_posts_ingested_total", action="created") == 1
    assert delta(before, after, "workshop_posts_ingested_total", action="unchanged") == 1
    assert delta(before, after, "workshop_auth_failures_total", reason="invalid_token") == 1
    assert delta(before, after, "workshop_auth_failures_total", reason="missing_token") == 1
    route = {"method": "POST", "route": "/api/v1/posts", "status": "201"}
    assert delta(before, after, "workshop_http_requests_total", **route) == 1
    latency = "workshop_http_request_duration_seconds_count"
    assert delta(before, after, latency, route="/api/v1/posts") == 4
