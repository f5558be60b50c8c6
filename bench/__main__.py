"""`python -m bench`: build archives, serve them as an operator does, load every endpoint with
wrk next to nginx serving the same bytes, and write bench/results/<date>-<db>.{md,json}."""

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench import build, endpoints, flat, load, report

RESULTS = Path(__file__).parent / "results"


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--sizes", default="1000,10000,100000", help="archive sizes, comma separated"
    )
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per measurement")
    parser.add_argument("--database-url", default=None, help="postgresql://... (default SQLite)")
    parser.add_argument(
        "--endpoints",
        default="",
        help="only endpoints whose name contains one of these, or is one written =name "
        "(comma separated)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="reuse a built archive of the same size"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", choices=("both", "on", "off"), default="both")
    parser.add_argument("--no-ingest", action="store_true", help="skip the POST measurements")
    parser.add_argument(
        "--name", help="results file name without suffix (default <date>-<database>)"
    )
    parser.add_argument(
        "--flat-rounds",
        type=int,
        default=3,
        help="rounds of the side-by-side flatness pass, smallest vs largest size (0: none)",
    )
    parser.add_argument(
        "--flat-control",
        action="store_true",
        help="the side-by-side pass serves the smallest archive twice instead of the smallest "
        "and the largest: how far two identical servers' p99s differ on this machine",
    )
    return parser.parse_args(argv)


def _wanted(args: argparse.Namespace) -> list[str]:
    """The --endpoints filter: parts of endpoint names (empty: every endpoint)."""
    return [w.strip() for w in args.endpoints.split(",") if w.strip()]


def _token(database_url: str) -> str:
    env = {**os.environ, "WORKSHOP_DATABASE_URL": database_url}
    name = f"bench-{int(time.time() * 1000)}"
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "token", "create", name],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().splitlines()[0]


def measure_size(args: argparse.Namespace, size: int, work: Path) -> dict[str, object]:
    archive = build.prepare(size, args.database_url, args.keep)
    if archive.build_seconds:
        print(
            f"  {size} essays built in {archive.build_seconds:.0f} s "
            f"({size / archive.build_seconds:.0f} essays/s)",
            file=sys.stderr,
        )
    wanted = _wanted(args)
    modes = {"both": [True, False], "on": [True], "off": [False]}[args.cache]
    rows: list[dict[str, object]] = []
    nginx = load.Nginx()
    calibration: dict[str, float] | None = None
    try:
        for cache in modes:
            server = load.serve(archive.url, args.workers, cache, work / f"server-{size}.log")
            try:
                found = endpoints.discover(server.url, archive.url, work)
                found = [e for e in found if endpoints.chosen(e.name, wanted)]
                if not nginx.files:  # the same bytes as the app, once per archive
                    for i, e in enumerate(found):
                        if not e.absent:
                            answer = httpx.get(endpoints.target_url(server.url, e.path), timeout=60)
                            e.static_url = nginx.add(
                                f"e{i}", answer.content, answer.headers.get("content-type", "")
                            )
                    if any(e.script is not None for e in found):
                        _add_pages(nginx, server.url, archive.url)
                    nginx.start()
                    _check_pages(nginx, server.url, found)
                else:
                    for i, e in enumerate(found):
                        e.static_url = f"http://127.0.0.1:{nginx.port}/e{i}"
                if calibration is None:
                    calibration = _calibrate(args, nginx, found, work)
                for e in found:
                    rows.append(_measure(args, server, e, size, cache, nginx.pages > 0))
                if not args.no_ingest and (not wanted or any("ingest" in w for w in wanted)):
                    rows.extend(_ingest(args, server, archive.url, found, size, cache, work))
            finally:
                server.stop()
    finally:
        nginx.stop()
    return {
        "size": size,
        "build_seconds": archive.build_seconds,
        "calibration": calibration,
        "rows": rows,
    }


def _add_pages(nginx: load.Nginx, base: str, database_url: str) -> None:
    """Every essay's page at its own path, for the random-essay rows: nginx then serves the
    same pages drawn by the same script, reading them from as many files as the app reads."""
    started = time.monotonic()
    content_type = httpx.get(base + "/").headers.get("content-type", "")
    for path, body in endpoints.essay_pages(database_url):
        nginx.add_page(path, body, content_type)
    # On disk before measuring, as the archive's copy (`build.prepare`): else the kernel writes
    # these 2 GB (at 100,000 essays) out over the first rows measured.
    os.sync()
    print(
        f"  nginx: {nginx.pages} essay pages written in {time.monotonic() - started:.0f} s",
        file=sys.stderr,
    )


def _check_pages(nginx: load.Nginx, base: str, found: list[endpoints.Endpoint]) -> None:
    """The pages nginx serves are the app's, byte for byte (a sample of every script's paths)."""
    if not nginx.pages:
        return
    static = f"http://127.0.0.1:{nginx.port}"
    for e in found:
        if e.script is None:
            continue
        paths = re.findall(r'^"(/read/[^"]+)",?$', e.script.read_text(), re.MULTILINE)
        for path in random.Random(7).sample(paths, min(25, len(paths))):
            app, peer = httpx.get(base + path), httpx.get(static + path)
            if (app.status_code, app.content) != (peer.status_code, peer.content):
                raise SystemExit(f"bench: nginx's copy of {path} differs from the app's answer")
            if app.headers.get("content-type") != peer.headers.get("content-type"):
                raise SystemExit(f"bench: nginx's content type for {path} differs from the app's")


def _calibrate(
    args: argparse.Namespace,
    nginx: load.Nginx,
    found: list[endpoints.Endpoint],
    work: Path,
) -> dict[str, float] | None:
    """A bare ASGI callable (bench/bare.py) serving the popular essay's bytes, against nginx
    serving them, in the order of every row (`_measure`): this machine's ceiling for any Python
    app under stock uvicorn."""
    popular = next((e for e in found if e.name == "essay (one popular)" and e.static_url), None)
    if popular is None:
        return None
    name = httpx.URL(popular.static_url).path.lstrip("/")
    bare = load.serve_bare(nginx.dir / name, nginx.files[name], args.workers, work / "bare.log")
    bares: list[load.Result] = []
    peers: list[load.Result] = []
    try:
        load.wrk(bare.url + "/", 1)  # warm-ups, discarded
        load.wrk(popular.static_url, 1)
        for _ in range(2):
            bares.append(load.wrk(bare.url + "/", args.seconds))
            peers.append(load.wrk(popular.static_url, args.seconds))
    finally:
        bare.stop()
    result, peer = load.mean(bares), load.mean(peers)
    print(
        f"  calibration: bare ASGI callable {result.rps:8.0f} req/s, nginx {peer.rps:.0f}: "
        f"ratio {result.rps / peer.rps:.3f}",
        file=sys.stderr,
    )
    return {"rps": result.rps, "static_rps": peer.rps, "ratio": result.rps / peer.rps}


def _measure(
    args: argparse.Namespace,
    server: load.Server,
    e: endpoints.Endpoint,
    size: int,
    cache: bool,
    nginx_pages: bool = False,
) -> dict[str, object]:
    """One endpoint, app against nginx. A random-essay row's nginx serves every essay's page at
    its own path, drawn by the same script (`nginx_pages`), and the row also notes its ratio to
    nginx serving the one popular page (how runs before commit 7423d16 measured it)."""
    row: dict[str, object] = {
        "endpoint": e.name,
        "path": e.path,
        "size": size,
        "cache": "on" if cache else "off",
    }
    if e.absent:
        print(f"  {e.name}: {e.absent}", file=sys.stderr)
        return {**row, "absent": e.absent}
    url = endpoints.target_url(server.url, e.path)
    static_headers = {}
    if e.status == 304:  # nginx answers 304 to its own ETag: the same work, statically
        etag = httpx.get(e.static_url).headers["etag"]
        static_headers = {"If-None-Match": etag}
    static_url, static_script = e.static_url, None
    one_file_script = None  # random essays: also nginx serving the one popular page
    if e.script is not None:  # the same client work per request: a Lua script picks a path
        one_file_script = endpoints.random_essays_script(
            [httpx.URL(e.static_url).path], e.script.with_suffix(".static.lua")
        )
        static_script = one_file_script
        if nginx_pages:  # nginx serves the same pages, drawn by the same script
            static_url = f"http://127.0.0.1:{httpx.URL(e.static_url).port}{e.path}"
            static_script = e.script
    load.wrk(url, 1, e.script, headers=e.headers)  # warm-ups, discarded
    load.wrk(static_url, 1, static_script, headers=static_headers)
    if e.first_pass is not None:  # every page read once, on both sides (`Endpoint.first_pass`)
        for done in load.first_passes([url, static_url], e.first_pass):
            print(f"  first pass: {done.requests} requests, {done.rps:.0f}/s", file=sys.stderr)
    server.peak_total = server.peak_worker = 0
    # As `peer.sh` does: app, nginx, app, nginx; the ratio of the means. (nginx alone ran at
    # 97-119k requests/s within one night's run: one run of each tied a ratio to one moment.)
    apps: list[load.Result] = []
    statics: list[load.Result] = []
    one_files: list[load.Result] = []
    for _ in range(2):
        server.sample()
        apps.append(load.wrk(url, args.seconds, e.script, headers=e.headers))
        server.sample()
        statics.append(load.wrk(static_url, args.seconds, static_script, headers=static_headers))
        if static_script is not one_file_script:
            one_files.append(load.wrk(e.static_url, args.seconds, one_file_script))
    result, peer = load.mean(apps), load.mean(statics)
    if one_files:  # as earlier runs measured these rows: against nginx serving one page
        one_file = load.mean(one_files)
        if one_file.rps:
            row.update(one_file_static_rps=one_file.rps, one_file_ratio=result.rps / one_file.rps)
    if e.status == 304:  # and as `peer.sh URL` measures it: nginx serving the page itself
        page = load.wrk(e.static_url, args.seconds)
        if page.rps:
            row.update(page_static_rps=page.rps, page_ratio=result.rps / page.rps)
    row.update(
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        errors=result.errors,
        static_rps=peer.rps,
        ratio=result.rps / peer.rps if peer.rps else None,
        peak_rss_mb=server.peak_total / 2**20,
        peak_worker_rss_mb=server.peak_worker / 2**20,
    )
    print(
        f"  {size:>6} cache {row['cache']:<3} {e.name:<30} {result.rps:8.0f} req/s  "
        f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  ratio {row['ratio']:.3f}  "
        f"rss {row['peak_rss_mb']:.0f} MB {result.errors}"
        + (f"  (one page: {row['one_file_ratio']:.3f})" if "one_file_ratio" in row else ""),
        file=sys.stderr,
    )
    return row


def _ingest(
    args: argparse.Namespace,
    server: load.Server,
    database_url: str,
    found: list[endpoints.Endpoint],
    size: int,
    cache: bool,
    work: Path,
) -> list[dict[str, object]]:
    probe = httpx.post(server.url + "/api/v1/posts", json={})
    base_row = {"size": size, "cache": "on" if cache else "off", "path": "/api/v1/posts"}
    if probe.status_code in (404, 405):
        print(f"  ingest: absent ({probe.status_code})", file=sys.stderr)
        return [
            {
                **base_row,
                "endpoint": "POST /api/v1/posts",
                "absent": f"absent ({probe.status_code})",
            }
        ]
    token = _token(database_url)
    readers = found[0]
    rows: list[dict[str, object]] = []
    for label, opts, base in (
        ("sequential", ["-t1", "-c1"], 50_000_000),
        ("8 concurrent", ["-t2", "-c8"], 60_000_000),
    ):
        base += 0 if cache else 5_000_000
        script = endpoints.ingest_script(token, base, work / "ingest.lua")
        reader = subprocess.Popen(
            [
                load.WRK,
                *load.WRK_OPTS,
                f"-d{args.seconds}s",
                "--latency",
                "-s",
                str(readers.script),
                server.url + readers.path,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        server.peak_total = server.peak_worker = 0
        result = load.wrk(server.url + "/api/v1/posts", args.seconds, script, opts=opts)
        out = reader.communicate()[0]
        reads = load.parse(out)
        rows.append(
            {
                **base_row,
                "endpoint": f"POST /api/v1/posts ({label}, readers loading)",
                "rps": result.rps,
                "p50_ms": result.p50_ms,
                "p99_ms": result.p99_ms,
                "errors": result.errors,
                "reader_rps": reads.rps,
                "reader_p99_ms": reads.p99_ms,
                "peak_rss_mb": server.peak_total / 2**20,
                "peak_worker_rss_mb": server.peak_worker / 2**20,
            }
        )
        print(
            f"  {size:>6} ingest {label}: {result.rps:.0f} posts/s p99 {result.p99_ms:.1f} ms "
            f"{result.errors}; readers {reads.rps:.0f} req/s p99 {reads.p99_ms:.1f} ms",
            file=sys.stderr,
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    load.wait_for_tools()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    kind = "postgresql" if args.database_url else "sqlite"
    started = datetime.now(UTC)
    runs = []
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / (args.name or f"{started:%Y-%m-%d}-{kind}")
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for size in sizes:
            print(f"{kind}: {size} essays", file=sys.stderr)
            runs.append(measure_size(args, size, Path(tmp)))
            # After every size, so a long run that is stopped still leaves its results.
            report.write(stem, kind, started, args, runs)
            print(f"wrote {stem}.md and {stem}.json", file=sys.stderr)
        if (len(sizes) > 1 or args.flat_control) and args.flat_rounds > 0:
            other = f"{sizes[0]} again" if args.flat_control else sizes[-1]
            print(f"{kind}: {sizes[0]} and {other} essays side by side", file=sys.stderr)
            side_by_side = flat.measure(args, sizes, _wanted(args), Path(tmp))
            report.write(stem, kind, started, args, runs, side_by_side)
            print(f"wrote {stem}.md and {stem}.json", file=sys.stderr)


if __name__ == "__main__":
    main()
