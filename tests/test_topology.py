"""Nothing lives in one worker: two hosts on one database behind nginx (deploy/nginx.conf)."""

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import post_json
from topology import Topology, require_nginx, running_topology


@pytest.fixture
def topology(database_url: str, tmp_path: Path) -> Iterator[Topology]:
    require_nginx()
    # A low failure limit keeps the brute-force test short; the window outlasts the test.
    with running_topology(database_url, tmp_path, WORKSHOP_AUTH_FAIL_LIMIT="4") as topo:
        yield topo


@pytest.fixture
def bearer(topology: Topology) -> dict[str, str]:
    return {"Authorization": "Bearer " + topology.cli("token", "create", "engine")}


def _shared_lifetime(cache_control: str) -> int | None:
    """The seconds a shared cache may keep an answer (s-maxage wins over max-age)."""
    for directive in ("s-maxage", "max-age"):
        found = re.search(rf"(?:^|[,\s]){directive}=(\d+)", cache_control)
        if found:
            return int(found.group(1))
    return None


def test_post_via_one_host_is_visible_via_the_other_and_the_proxy(topology, bearer) -> None:
    a, b = topology.hosts
    proxy = topology.proxy_url
    before = httpx.get(proxy + "/")  # primes the proxy's cache with the page as it was
    assert before.status_code == 200

    created = httpx.post(a.url + "/api/v1/posts", json=post_json(cycle=4100), headers=bearer)
    assert created.status_code == 201, created.text
    path = urlsplit(created.headers["location"]).path

    assert httpx.get(b.url + path).status_code == 200
    assert httpx.get(f"{b.url}/api/v1/posts/{created.json()['id']}").json()["cycle"] == 4100
    # Never requested before, so not in the cache: visible through the proxy at once.
    through = httpx.get(proxy + path)
    assert through.status_code == 200 and through.headers["x-request-id"]

    # The home page may still be the proxy's earlier copy, but only within its advertised lifetime.
    home = httpx.get(proxy + "/")
    if path not in home.text:
        assert home.headers.get("x-proxy-cache") in {"HIT", "STALE", "UPDATING"}
        lifetime = _shared_lifetime(home.headers.get("cache-control", ""))
        assert lifetime is not None, "a cached copy without a lifetime"
        assert int(home.headers.get("age", "0")) <= lifetime


def test_the_proxy_never_caches_writes_or_authorised_requests(topology, bearer) -> None:
    proxy = topology.proxy_url
    for _ in range(2):
        reply = httpx.post(proxy + "/api/v1/posts", json=post_json(cycle=4200), headers=bearer)
        assert reply.status_code in {200, 201}
        assert reply.headers.get("x-proxy-cache") in {None, "BYPASS", "MISS"}
    authorised = httpx.get(proxy + "/api/v1/posts", headers=bearer)
    assert authorised.headers["x-proxy-cache"] == "BYPASS"
    # /metrics is for the operator's scraper: allowed from loopback only (deploy/nginx.conf).
    assert httpx.get(proxy + "/metrics").status_code == 200


def test_concurrent_identical_posts_over_both_hosts_make_one_post(topology, bearer) -> None:
    body = post_json(cycle=4300, title="Twenty Copies of One Essay")
    urls = [h.url for h in topology.hosts]

    def send(i: int) -> httpx.Response:
        return httpx.post(urls[i % 2] + "/api/v1/posts", json=body, headers=bearer, timeout=30)

    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(send, range(20)))
    assert sorted({r.status_code for r in replies}) in ([201], [200, 201])
    assert sum(r.status_code == 201 for r in replies) == 1
    assert len({r.json()["id"] for r in replies}) == 1
    listed = httpx.get(urls[1] + "/api/v1/posts", params={"limit": 100}).json()["items"]
    assert [p["cycle"] for p in listed].count(4300) == 1


def test_failed_authentication_limit_holds_across_hosts(topology) -> None:
    a, b = topology.hosts
    bad = {"Authorization": "Bearer wk_not-a-real-token"}
    # Four failures (the limit), alternating hosts: each host alone has seen only two.
    for url in (a.url, b.url, a.url, b.url):
        reply = httpx.post(url + "/api/v1/posts", json=post_json(cycle=4400), headers=bad)
        assert reply.status_code == 401
    for url in (a.url, b.url, topology.proxy_url):
        refused = httpx.post(url + "/api/v1/posts", json=post_json(cycle=4400), headers=bad)
        assert refused.status_code == 429, url
        assert int(refused.headers["retry-after"]) > 0


def test_token_revoked_on_the_cli_is_refused_by_every_host(topology, bearer) -> None:
    a, b = topology.hosts
    assert (
        httpx.post(a.url + "/api/v1/posts", json=post_json(cycle=4500), headers=bearer).status_code
        == 201
    )
    assert (
        httpx.post(b.url + "/api/v1/posts", json=post_json(cycle=4501), headers=bearer).status_code
        == 201
    )
    topology.cli("token", "revoke", "engine")
    for url in (b.url, a.url, topology.proxy_url):
        refused = httpx.post(url + "/api/v1/posts", json=post_json(cycle=4502), headers=bearer)
        assert refused.status_code == 401, url
        assert refused.headers["www-authenticate"].startswith("Bearer")
