"""Soak: a bounded mixed load through nginx's cache in front of two Workshop hosts.

    .venv/bin/python bench/soak.py --minutes 10
    .venv/bin/python bench/soak.py --minutes 3 --database-url postgresql://postgres@127.0.0.1:5433/soak

Starts the topology the tests use (tests/topology.py: two `workshop serve` hosts on one database,
Debian's nginx with deploy/nginx.conf), then for N minutes runs readers on pages and feeds, the
engine posting one essay a second (retrying like the engine: same request, on a connection error
or a 5xx), and feed pollers sending conditional requests. Reports 5xx answers, lost posts (every
acknowledged POST looked up afterwards) and worker memory over time; writes
bench/results/soak-<date>.md. Not part of the test suite.
"""

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from conftest import post_json, test_settings  # noqa: E402
from topology import Topology, rss_kib, running_topology, worker_pids  # noqa: E402

from app import db, tokens  # noqa: E402

READ_PATHS = ["/", "/archive", "/search?q=breadth", "/api/v1/posts", "/sitemap.xml"]
FEEDS = ["/feed.xml", "/atom.xml", "/feed.json"]


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: Counter = field(default_factory=Counter)  # (kind, status) -> n
    cache: Counter = field(default_factory=Counter)  # X-Proxy-Cache -> n
    latencies: dict[str, list[float]] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)
    transport_errors: Counter = field(default_factory=Counter)
    acknowledged: dict[int, int] = field(default_factory=dict)  # cycle -> id
    permalinks: list[str] = field(default_factory=list)
    rss: list[tuple[float, dict[int, int]]] = field(default_factory=list)

    def record(self, kind: str, reply: httpx.Response, seconds: float) -> None:
        with self.lock:
            self.statuses[(kind, reply.status_code)] += 1
            self.cache[reply.headers.get("x-proxy-cache", "-")] += 1
            self.latencies.setdefault(kind, []).append(seconds)
            if reply.status_code >= 500:
                rid = reply.headers.get("x-request-id", "?")
                self.server_errors.append(
                    f"{kind} {reply.request.url.path} {reply.status_code} {rid}"
                )


def timed(
    client: httpx.Client, tally: Tally, kind: str, method: str, url: str, **kw
) -> httpx.Response | None:
    start = time.perf_counter()
    try:
        reply = client.request(method, url, **kw)
    except httpx.TransportError as exc:
        with tally.lock:
            tally.transport_errors[f"{kind}: {type(exc).__name__}"] += 1
        return None
    tally.record(kind, reply, time.perf_counter() - start)
    return reply


def engine(topo: Topology, tally: Tally, token: str, stop: threading.Event) -> None:
    """One essay a second through the proxy; a failed attempt is retried, same body, same cycle."""
    headers = {"Authorization": f"Bearer {token}"}
    cycle = 100_000
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            cycle += 1
            tick = time.monotonic()
            body = post_json(cycle=cycle, title=f"Soak Essay for Cycle {cycle}")
            for _attempt in range(60):
                reply = timed(
                    client,
                    tally,
                    "engine POST",
                    "POST",
                    topo.proxy_url + "/api/v1/posts",
                    json=body,
                    headers=headers,
                )
                if reply is not None and reply.status_code < 500:
                    if reply.status_code in (200, 201):
                        with tally.lock:
                            tally.acknowledged[cycle] = reply.json()["id"]
                            tally.permalinks.append(httpx.URL(reply.headers["location"]).path)
                    break
                time.sleep(0.5)
            stop.wait(max(0.0, 1.0 - (time.monotonic() - tick)))


def reader(topo: Topology, tally: Tally, rate: float, stop: threading.Event) -> None:
    rng = random.Random()
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            with tally.lock:
                posts = tally.permalinks[-50:]
            choice = rng.random()
            if posts and choice < 0.5:
                path, kind = rng.choice(posts), "page /read"
            elif choice < 0.8:
                path = rng.choice(READ_PATHS)
                kind = f"page {path}"
            else:
                path = rng.choice(FEEDS)
                kind = f"feed {path}"
            timed(client, tally, kind, "GET", topo.proxy_url + path)
            stop.wait(1 / rate)


def poller(topo: Topology, tally: Tally, interval: float, stop: threading.Event) -> None:
    """A feed reader: If-None-Match / If-Modified-Since from its last answer."""
    validators: dict[str, dict[str, str]] = {}
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            for feed in FEEDS:
                reply = timed(
                    client,
                    tally,
                    "poll (conditional)",
                    "GET",
                    topo.proxy_url + feed,
                    headers=validators.get(feed, {}),
                )
                if reply is not None and reply.status_code == 200:
                    saved = {}
                    if "etag" in reply.headers:
                        saved["If-None-Match"] = reply.headers["etag"]
                    if "last-modified" in reply.headers:
                        saved["If-Modified-Since"] = reply.headers["last-modified"]
                    validators[feed] = saved
            stop.wait(interval)


def sampler(topo: Topology, tally: Tally, every: float, stop: threading.Event) -> None:
    start = time.monotonic()
    while True:
        pids: list[int] = []
        for host in topo.hosts:
            pids.extend(worker_pids(host.process.pid) or [host.process.pid])
        with tally.lock:
            tally.rss.append((time.monotonic() - start, {p: rss_kib(p) for p in pids}))
        if stop.wait(every):
            return


def find_lost(topo: Topology, tally: Tally) -> list[int]:
    """Acknowledged essays that a host does not serve back, or serves with another cycle."""
    lost = []
    with httpx.Client(timeout=30) as client:
        for cycle, post_id in sorted(tally.acknowledged.items()):
            reply = client.get(f"{topo.hosts[cycle % 2].url}/api/v1/posts/{post_id}")
            if reply.status_code != 200 or reply.json().get("cycle") != cycle:
                lost.append(cycle)
        listed: list[int | None] = []
        url = f"{topo.hosts[0].url}/api/v1/posts?limit=100"
        while url:
            page = client.get(url).json()
            listed.extend(p["cycle"] for p in page["items"])
            url = page.get("next")
    dupes = [c for c, n in Counter(listed).items() if n > 1 and c is not None]
    return lost + [-c for c in dupes]  # a duplicate shows as a negative cycle


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(
    args: argparse.Namespace, database: str, tally: Tally, lost: list[int], seconds: float
) -> str:
    total = sum(tally.statuses.values())
    five = sum(n for (_, s), n in tally.statuses.items() if s >= 500)
    lines = [
        f"# Soak {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- Duration: {seconds / 60:.1f} min; database: {database};"
        f" 2 hosts x {args.workers} worker(s) behind nginx (deploy/nginx.conf);"
        f" {args.readers} readers at {args.reader_rate}/s each, {args.pollers} feed pollers"
        f" every {args.poll_interval:.0f} s, the engine posting every second.",
        f"- Requests: {total} ({total / seconds:.1f}/s); **5xx: {five}**; transport errors: "
        f"{sum(tally.transport_errors.values())} {dict(tally.transport_errors) or ''}",
        f"- Essays acknowledged: {len(tally.acknowledged)}; **lost or duplicated: {len(lost)}**"
        + (f" {lost[:20]}" if lost else ""),
        f"- Proxy cache: {dict(tally.cache.most_common())}",
        "",
        "| request | count | statuses | p50 ms | p95 ms | p99 ms |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for kind in sorted(tally.latencies):
        values = tally.latencies[kind]
        statuses = {s: n for (k, s), n in sorted(tally.statuses.items()) if k == kind}
        lines.append(
            f"| {kind} | {len(values)} | {statuses} | {percentile(values, 0.5) * 1000:.1f} |"
            f" {percentile(values, 0.95) * 1000:.1f} | {percentile(values, 0.99) * 1000:.1f} |"
        )
    lines += ["", "Worker resident memory (MiB) over time:", ""]
    pids = sorted({p for _, sample in tally.rss for p in sample})
    lines.append("| t (s) | " + " | ".join(f"pid {p}" for p in pids) + " |")
    lines.append("|---:|" + "---:|" * len(pids))
    step = max(1, len(tally.rss) // 20)
    shown = tally.rss[::step]
    if tally.rss and shown[-1] is not tally.rss[-1]:
        shown.append(tally.rss[-1])
    for t, sample in shown:
        cells = " | ".join(f"{sample.get(p, 0) / 1024:.1f}" for p in pids)
        lines.append(f"| {t:.0f} | {cells} |")
    if len(tally.rss) >= 4:
        growth = []
        for p in pids:
            series = [s[p] for _, s in tally.rss if s.get(p)]
            half = len(series) // 2
            if half:
                growth.append(statistics.mean(series[half:]) / statistics.mean(series[:half]) - 1)
        if growth:
            lines += ["", f"RSS growth, second half over first half: max {max(growth) * 100:+.1f}%"]
    if tally.server_errors:
        lines += ["", "5xx answers (first 20):", ""] + [f"- {e}" for e in tally.server_errors[:20]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--database-url", default="", help="default: a new SQLite file")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers per host")
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--reader-rate", type=float, default=10, help="requests/s per reader")
    parser.add_argument("--pollers", type=int, default=2)
    parser.add_argument("--poll-interval", type=float, default=5)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="workshop-soak-") as tmp:
        directory = Path(tmp)
        database_url = args.database_url or f"sqlite:///{directory}/soak.db"
        settings = test_settings(database_url)
        db.upgrade(settings)
        engine_db = db.make_engine(settings)
        token = tokens.create_token(engine_db, f"soak-{int(time.time())}")
        engine_db.dispose()
        tally, stop = Tally(), threading.Event()
        with running_topology(database_url, directory, workers=args.workers) as topo:
            threads = [threading.Thread(target=engine, args=(topo, tally, token, stop))]
            threads += [
                threading.Thread(target=reader, args=(topo, tally, args.reader_rate, stop))
                for _ in range(args.readers)
            ]
            threads += [
                threading.Thread(target=poller, args=(topo, tally, args.poll_interval, stop))
                for _ in range(args.pollers)
            ]
            threads.append(threading.Thread(target=sampler, args=(topo, tally, 10, stop)))
            started = time.monotonic()
            for t in threads:
                t.start()
            try:
                stop.wait(args.minutes * 60)
            except KeyboardInterrupt:
                print("interrupted: reporting what ran", file=sys.stderr)
            stop.set()
            for t in threads:
                t.join(60)
            seconds = time.monotonic() - started
            lost = find_lost(topo, tally)
        kind = "PostgreSQL" if database_url.startswith("postgres") else "SQLite"
        text = report(args, kind, tally, lost, seconds)
    args.output.mkdir(parents=True, exist_ok=True)
    target = args.output / f"soak-{datetime.now(UTC):%Y-%m-%d-%H%M}.md"
    target.write_text(text)
    print(text)
    print(f"written to {target}", file=sys.stderr)
    five = sum(n for (_, s), n in tally.statuses.items() if s >= 500)
    return 1 if five or lost else 0


if __name__ == "__main__":
    sys.exit(main())
