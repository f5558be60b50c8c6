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
    # The two sides, by label: the smallest and the largest archive; or, as a control
    # (`--flat-control`), the smallest served twice, which tells how far two identical servers'
    # p99s drift apart here: the noise the verdict is read against.
    control = args.flat_control
    if control:
        large = small
    sides = {f"{small:,}": small, f"{small:,} again" if control else f"{large:,}": large}
    cache = args.cache != "off"
    servers: dict[str, load.Server] = {}
    found: dict[str, dict[str, endpoints.Endpoint]] = {}
    archives: dict[int, build.Archive] = {}  # the control's two servers share one copy
    try:
        for label, size in sides.items():
            archive = archives.get(size)
            if archive is None:  # built by the main pass: a fresh copy to run on
                archive = archives[size] = build.prepare(size, args.database_url, keep=True)
            server = servers[label] = load.serve(
                archive.url, args.workers, cache, work / f"flat-server-{size}-{len(servers)}.log"
            )
            folder = work / f"flat-{size}"  # each archive's own scripts (random essay paths)
            folder.mkdir(exist_ok=True)
            listed = endpoints.discover(server.url, archive.url, folder)
            found[label] = {
                e.name: e for e in listed if not e.absent and endpoints.chosen(e.name, wanted)
            }
        first, second = sides
        both = [name for name in found[first] if name in found[second]]
        rows = [_endpoint(args, servers, found, name, first, second, cache) for name in both]
    finally:
        for server in servers.values():
            server.stop()
    return {
        "small": small,
        "large": large,
        "labels": [first, second],
        "control": control,
        "rounds": args.flat_rounds,
        "seconds": args.seconds,
        "rows": rows,
    }


def _endpoint(
    args: argparse.Namespace,
    servers: dict[str, load.Server],
    found: dict[str, dict[str, endpoints.Endpoint]],
    name: str,
    small: str,
    large: str,
    cache: bool,
) -> dict[str, object]:
    """One endpoint on both sides (`small`, `large`: their labels), round after round."""

    def url(side: str) -> str:
        return endpoints.target_url(servers[side].url, found[side][name].path)

    for side in (small, large):  # warm-up, discarded
        e = found[side][name]
        load.wrk(url(side), 1, e.script, headers=e.headers)
        if e.first_pass is not None:  # as `_measure` does: every page read once first
            load.first_passes([url(side)], e.first_pass)
    p99: dict[str, list[float]] = {small: [], large: []}
    rps: dict[str, list[float]] = {small: [], large: []}
    for round_ in range(args.flat_rounds):
        order = (small, large) if round_ % 2 == 0 else (large, small)
        for side in order:
            e = found[side][name]
            result = load.wrk(url(side), args.seconds, e.script, headers=e.headers)
            p99[side].append(result.p99_ms)
            rps[side].append(result.rps)
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
        "p99_ms": p99,
        "rps": rps,
        "median_p99_ms": {small: median_small, large: median_large},
        "growth": growth,
    }
