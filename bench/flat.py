"""Flat with size, measured side by side: the smallest and the largest archive served at once,
every endpoint loaded on one and then on the other, round after round, and the median p99 of
each compared.

The main table measures one size after another, tens of minutes apart, on a machine shared with
other work whose speed drifts by half within an hour (nginx's own rate moved from 33k to 53k
requests/s in one run): two p99s measured that far apart differ by the machine's drift as much as
by the archive's size. Here both archives answer the same endpoint within seconds of each other,
in the order small, large, large, small, ... (each size first as often as last), so drift falls
on both alike and the median leaves out a single disturbed measurement. Both servers run all
along; the one not being loaded is idle.
"""

import argparse
import statistics
import sys
from pathlib import Path

from bench import build, endpoints, load


def measure(
    args: argparse.Namespace, sizes: list[int], wanted: list[str], work: Path
) -> dict[str, object]:
    small, large = sizes[0], sizes[-1]
    cache = args.cache != "off"
    servers: dict[int, load.Server] = {}
    found: dict[int, dict[str, endpoints.Endpoint]] = {}
    try:
        for size in (small, large):
            archive = build.prepare(size, args.database_url, keep=True)  # built by the main pass
            server = servers[size] = load.serve(
                archive.url, args.workers, cache, work / f"flat-server-{size}.log"
            )
            folder = work / f"flat-{size}"  # each archive's own scripts (random essay paths)
            folder.mkdir(exist_ok=True)
            listed = endpoints.discover(server.url, archive.url, folder)
            found[size] = {
                e.name: e for e in listed if not e.absent and endpoints.chosen(e.name, wanted)
            }
        both = [name for name in found[small] if name in found[large]]
        rows = [_endpoint(args, servers, found, name, small, large, cache) for name in both]
    finally:
        for server in servers.values():
            server.stop()
    return {
        "small": small,
        "large": large,
        "rounds": args.flat_rounds,
        "seconds": args.seconds,
        "rows": rows,
    }


def _endpoint(
    args: argparse.Namespace,
    servers: dict[int, load.Server],
    found: dict[int, dict[str, endpoints.Endpoint]],
    name: str,
    small: int,
    large: int,
    cache: bool,
) -> dict[str, object]:
    def url(size: int) -> str:
        return endpoints.target_url(servers[size].url, found[size][name].path)

    for size in (small, large):  # warm-up, discarded
        e = found[size][name]
        load.wrk(url(size), 1, e.script, headers=e.headers)
    p99: dict[int, list[float]] = {small: [], large: []}
    rps: dict[int, list[float]] = {small: [], large: []}
    for round_ in range(args.flat_rounds):
        order = (small, large) if round_ % 2 == 0 else (large, small)
        for size in order:
            e = found[size][name]
            result = load.wrk(url(size), args.seconds, e.script, headers=e.headers)
            p99[size].append(result.p99_ms)
            rps[size].append(result.rps)
    median_small, median_large = statistics.median(p99[small]), statistics.median(p99[large])
    growth = median_large / median_small if median_small else None
    print(
        f"  side by side {name:<36} p99 {median_small:6.2f} ms at {small}, "
        f"{median_large:6.2f} ms at {large} ({growth or 0:.2f}x)",
        file=sys.stderr,
    )
    return {
        "endpoint": name,
        "cache": "on" if cache else "off",
        "p99_ms": {str(small): p99[small], str(large): p99[large]},
        "rps": {str(small): rps[small], str(large): rps[large]},
        "median_p99_ms": {str(small): median_small, str(large): median_large},
        "growth": growth,
    }
